//! Tern's end-to-end tests: real guests, the real `tern` binary, whole
//! outputs compared against uninterrupted runs.

mod badinput;
mod checkpoint;
mod cross;
mod migrate;
mod sandbox;
mod support;
mod wasi_prepared;
