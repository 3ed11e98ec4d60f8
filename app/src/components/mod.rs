//! Reusable pieces of the monitor.

pub mod dag;
mod sidebar;
mod spec_form;

pub use sidebar::Sidebar;
pub use spec_form::StartForm;
#[cfg(feature = "hydrate")]
pub use spec_form::preload_yaml_reader;
