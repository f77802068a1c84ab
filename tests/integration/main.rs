//! The one integration-test binary (each test binary re-links libtorch).

mod common;

mod cli;
mod config_errors;
mod data;
mod ddp;
mod dist;
mod engine;
mod examples;
mod export;
mod hostile_config;
mod hostile_data;
mod hostile_outputs;
mod hostile_weights;
mod linkage;
mod resnet;
mod training;
mod weights;
