//! One module per subcommand.

pub mod certs;
pub mod checkpoint;
pub mod cluster;
pub mod controller;
pub mod inspect;
pub mod logs;
pub mod migrate;
pub mod node;
pub mod prepare;
pub mod ps;
pub mod restore;
pub mod run;
pub mod stop;
pub mod wait;
