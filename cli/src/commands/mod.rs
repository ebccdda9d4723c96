//! Runs one parsed command against the API: what each subcommand does lives
//! in its own file here; this one connects them to the global options.

mod cluster;
mod module;
mod op;
mod resource;

use crate::args::{Command, Global};
use crate::client::{self, Api};
use crate::error::CliError;

/// What every command gets: the API client and the output format.
pub struct Ctx {
    pub api: Api,
    /// `--json`: print the API's JSON instead of text.
    pub json: bool,
}

pub async fn run(global: Global, command: Command) -> Result<(), CliError> {
    let token = client::token(global.token_file.as_deref())?;
    let ctx = Ctx {
        api: Api::new(&global.url, token)?,
        json: global.json,
    };
    match command {
        Command::Cluster => cluster::show(&ctx).await,
        Command::Module(command) => module::run(&ctx, command).await,
        Command::Resource(command) => resource::run(&ctx, command).await,
        Command::Op(command) => op::run(&ctx, command).await,
        // Printed before any of this starts (main.rs).
        Command::Completions { .. } => Ok(()),
    }
}
