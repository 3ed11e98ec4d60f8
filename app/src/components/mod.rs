//! Reusable pieces of the monitor.

mod spec_checker;

pub use spec_checker::SpecChecker;
