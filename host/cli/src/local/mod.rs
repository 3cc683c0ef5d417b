//! The commands that need no daemon: `run` and `manifest` (the sandbox over
//! local files or a data directory), and the vault's `ingest`, `datasets`,
//! `export`, `erase`, `backup`, `restore` and `rotate-key` on a data
//! directory no daemon serves.

pub mod run;
pub mod vault;
