//! Tern's end-to-end tests: real guests, the real `tern` binary, whole
//! outputs compared against uninterrupted runs.

mod badinput;
mod checkpoint;
mod controller;
mod cross;
mod limits;
mod migrate;
mod sandbox;
mod security;
mod support;
mod wasi_prepared;
