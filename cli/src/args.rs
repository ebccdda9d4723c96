//! The command line of `zf`: global options, every subcommand and its
//! arguments (clap derive), and the exit codes `zf --help` lists.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde_json::Value;

const AFTER_HELP: &str = "\
Environment:
  ZF_URL         the management API, like --url (default http://127.0.0.1:8080)
  ZF_TOKEN       API token, sent as `Authorization: Bearer <token>`
  ZF_TOKEN_FILE  a file holding the API token, like --token-file (wins over ZF_TOKEN)

Exit codes:
  0    success
  1    the operation ran and failed or was cancelled (op run, and --follow of
       op events / op logs), or zf could not write its output
  2    usage error: bad arguments, or an input file that cannot be read or parsed
  3    the API refused the request (4xx): its error code and message are printed,
       and every violation of an operation's params schema
  4    the API cannot be reached, or it failed (5xx)
  130  interrupted (Ctrl-C); a followed operation goes on";

#[derive(Parser, Debug)]
#[command(
    name = "zf",
    version,
    about = "Command-line client of the zerofoot HTTP API",
    after_help = AFTER_HELP
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,

    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand takes.
#[derive(Args, Debug)]
pub struct Global {
    /// Base URL of the management API.
    #[arg(
        long,
        env = "ZF_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,

    /// A file holding the API token (else ZF_TOKEN is used, if set).
    #[arg(long, env = "ZF_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,

    /// Print the JSON the API answered, pretty, instead of text; streams
    /// (events, logs) print one JSON object a line.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// The cluster: nodes (status, role, sandbox), lead and term, management
    /// instances, repositories.
    Cluster,
    /// Module bundles: pack a folder, push, list, show.
    #[command(subcommand)]
    Module(ModuleCommand),
    /// Managed resources: put from a YAML or JSON file, get, list, remove.
    #[command(subcommand)]
    Resource(ResourceCommand),
    /// Operations: run, list, show, cancel, events, logs.
    #[command(subcommand)]
    Op(OpCommand),
    /// Print a completion script for a shell, e.g. `zf completions bash >
    /// /etc/bash_completion.d/zf`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand, Debug)]
pub enum ModuleCommand {
    /// Pack a module folder (module.json at its root) into a reproducible
    /// bundle, the same bytes as scripts/pack-module.sh; prints its path and
    /// sha256.
    Pack {
        /// The module folder.
        dir: PathBuf,
        /// Where to write the bundle (default: <name>-<version>.tar.gz here).
        #[arg(short, long)]
        out: Option<PathBuf>,
    },
    /// Upload a bundle, or a module folder (packed first).
    Push {
        /// A .tar.gz bundle or a module folder.
        path: PathBuf,
    },
    /// List stored modules, newest version first.
    Ls,
    /// Show one module: its versions, and each operation's description and
    /// params JSON Schema.
    Show {
        /// The module's name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum ResourceCommand {
    /// Create or replace a resource from a YAML or JSON file holding `id`,
    /// `kind`, `config` and optionally `secrets`.
    Put {
        /// The file.
        file: PathBuf,
    },
    /// Show one resource (secret names only, never their values).
    Get {
        /// The resource id.
        id: String,
    },
    /// List resources, or those a label selector picks.
    Ls {
        /// e.g. `role=web,env in (prod,stage),!canary`: `k=v`, `k!=v`,
        /// `k in (a,b)`, `k notin (a,b)`, `k` (set), `!k` (not set).
        #[arg(long, short = 'l')]
        selector: Option<String>,
    },
    /// Delete a resource.
    Rm {
        /// The resource id.
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum OpCommand {
    /// Run an operation. A sync one is waited for and its result printed
    /// (exit 1 if it failed or was cancelled); an async one (a monitor)
    /// prints its id, or with --follow streams its events until it ends.
    Run(RunArgs),
    /// List operations, newest first.
    Ls {
        /// Only operations in this state (pending, running, cancelling,
        /// complete, failed, cancelled).
        #[arg(long)]
        state: Option<String>,
        /// Only operations of this module.
        #[arg(long)]
        module: Option<String>,
        /// Only sync or async operations.
        #[arg(long)]
        kind: Option<String>,
        /// At most this many (1 to 1000; the API's default is 100).
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Show an operation's execution context: state, owner, attempts,
    /// result, error.
    Show {
        /// The operation id.
        id: String,
    },
    /// Cancel an operation.
    Cancel {
        /// The operation id.
        id: String,
    },
    /// Print an async operation's events (`<seq> <at> <node> <key> <data>`).
    Events(FeedArgs),
    /// Print an operation's log lines (`<at> <node> <level> <msg>`).
    Logs(FeedArgs),
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The module.
    pub module: String,
    /// The operation.
    pub operation: String,
    /// The module's version (default: the newest).
    #[arg(long)]
    pub version: Option<String>,
    /// The resource to run it against.
    #[arg(long, conflicts_with_all = ["selector", "targets"])]
    pub resource: Option<String>,
    /// Run it as a batch on every resource this label selector picks
    /// (`role=web,env in (prod,stage),!canary`).
    #[arg(long, conflicts_with = "targets")]
    pub selector: Option<String>,
    /// Run it as a batch on these resources, in order (comma-separated).
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub targets: Option<Vec<String>>,
    /// A batch's most targets running at once (the API's default is 10).
    #[arg(long)]
    pub max_parallel: Option<u32>,
    /// What a batch does when targets fail: `continue`, `stop` (after the
    /// first failure) or a number N (stop after N failures).
    #[arg(long, value_parser = crate::input::parse_fail_policy)]
    pub fail_policy: Option<Value>,
    /// A parameter, KEY=VALUE: VALUE is taken as JSON when it parses
    /// (numbers, true, null, arrays, objects), else as a string. Repeatable;
    /// wins over --params-file.
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = crate::input::parse_param)]
    pub params: Vec<(String, Value)>,
    /// A JSON or YAML file holding the params object.
    #[arg(long)]
    pub params_file: Option<PathBuf>,
    /// For an async operation: stream its events until it ends (Ctrl-C stops
    /// following, not the operation).
    #[arg(long)]
    pub follow: bool,
}

#[derive(Args, Debug)]
pub struct FeedArgs {
    /// The operation id.
    pub id: String,
    /// Start after this seq.
    #[arg(long, default_value_t = 0)]
    pub after: u64,
    /// Keep printing new entries live, reconnecting when the connection
    /// drops, until the operation ends.
    #[arg(long)]
    pub follow: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn params_parse_as_json_or_strings() {
        let cli = Cli::try_parse_from([
            "zf", "op", "run", "shell", "run", "--param", "n=3", "--param", "s=hello", "--json",
        ])
        .expect("parse");
        let Command::Op(OpCommand::Run(run)) = cli.command else {
            panic!("not op run")
        };
        assert_eq!(
            run.params,
            vec![
                ("n".to_string(), serde_json::json!(3)),
                ("s".to_string(), serde_json::json!("hello"))
            ]
        );
        assert!(cli.global.json, "--json after the subcommand");
    }

    #[test]
    fn batches_take_targets_a_limit_and_a_policy() {
        let cli = Cli::try_parse_from([
            "zf",
            "op",
            "run",
            "shell",
            "run",
            "--targets",
            "a,b,c",
            "--max-parallel",
            "2",
            "--fail-policy",
            "3",
        ])
        .expect("parse");
        let Command::Op(OpCommand::Run(run)) = cli.command else {
            panic!("not op run")
        };
        assert_eq!(run.targets, Some(vec!["a".into(), "b".into(), "c".into()]));
        assert_eq!(run.max_parallel, Some(2));
        assert_eq!(run.fail_policy, Some(serde_json::json!({"stop_after": 3})));
        for clash in [
            ["--resource", "a", "--selector", "role=web"],
            ["--selector", "role=web", "--targets", "a"],
            ["--fail-policy", "later", "--selector", "x"],
        ] {
            let mut argv = vec!["zf", "op", "run", "shell", "run"];
            argv.extend(clash);
            assert!(Cli::try_parse_from(argv).is_err(), "{clash:?} is refused");
        }
    }
}
