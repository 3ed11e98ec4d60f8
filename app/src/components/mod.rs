//! Reusable pieces of the monitor.

mod badge;
mod dag;
mod sidebar;
mod spec_form;

pub use badge::Badge;
pub use dag::Dag;
pub use sidebar::Sidebar;
pub use spec_form::StartForm;
#[cfg(feature = "hydrate")]
pub use spec_form::preload_yaml_reader;
