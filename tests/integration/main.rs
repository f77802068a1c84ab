//! The one integration-test binary (each test binary re-links libtorch).

mod common;

mod cli;
mod config_errors;
mod data;
mod engine;
mod export;
mod hostile_outputs;
mod linkage;
mod resnet;
mod training;
mod weights;
