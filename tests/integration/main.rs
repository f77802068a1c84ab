//! The one integration-test binary (each test binary re-links libtorch).

mod common;

mod cli;
mod config_errors;
mod engine;
mod linkage;
mod training;
mod weights;
