//! One module per page.

mod home;
mod not_found;
mod workflow;

pub use home::Home;
pub use not_found::NotFound;
pub use workflow::WorkflowPage;
