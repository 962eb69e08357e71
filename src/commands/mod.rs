//! One module per subcommand.

pub mod inspect;
pub mod prepare;
pub mod restore;
pub mod run;
