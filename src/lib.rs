//! hondo: train image classifiers from a TOML config on libtorch (through `tch`).
//!
//! The binary (`src/main.rs`) parses the command line and calls into this library:
//! [`config`] reads and validates configs, [`models`] defines the networks, [`data`] reads
//! and augments images, [`train`] runs the loop, [`checkpoint`] writes and reads run state.

pub mod allocator;
pub mod budget;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod device;
pub mod evaluate;
pub mod export;
pub mod models;
pub mod plot;
pub mod predict;
pub mod run_dir;
pub mod tensor_io;
pub mod train;
pub mod weights;
