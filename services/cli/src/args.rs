//! The `alphadome` command line: its commands, and every setting of the
//! platform ([`Settings`]: each from its environment variable or flag,
//! listed by `--help` on every command).

use std::net::SocketAddr;

use alphadome_core::config::Settings;
use clap::{Parser, Subcommand};

use crate::stack::Service;

/// Alphadome: a multi-tenant WhatsApp Business chatbot platform.
///
/// Every setting comes from its environment variable (or the matching
/// flag); `--help` on any command lists them with their defaults.
#[derive(Parser)]
#[command(name = "alphadome", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Subcommand)]
pub enum Command {
    /// Apply pending database migrations (a no-op when all are applied).
    Migrate,
    /// Manage tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Master key utilities.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// The credential audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Messages that could not be processed (the dead-letter stream).
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Conversations handed to a person.
    #[command(subcommand)]
    Conversation(ConversationCommand),
    /// Training mode: questions the bot could not answer, and teaching it.
    #[command(subcommand)]
    Training(TrainingCommand),
    /// People who run tenants' bots (platform admins, tenant admins, agents).
    #[command(subcommand)]
    User(UserCommand),
    /// API tokens for programs (`Authorization: Bearer TOKEN`).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Messages, AI replies and tokens per day for a tenant.
    Usage {
        /// Tenant id or client phone.
        #[arg(long)]
        tenant: String,
        /// First day to report (YYYY-MM-DD); default 30 days ago.
        #[arg(long)]
        since: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run every service in one process (migrations applied first).
    Up {
        /// Do not apply migrations at start-up.
        #[arg(long)]
        no_migrate: bool,
    },
    /// Run one service (the scaled deployment: run as many as needed).
    Run {
        /// The service to run.
        #[arg(value_enum)]
        service: Service,
    },
    /// Chat with a tenant's bot from the terminal, without a Meta account.
    ///
    /// Sends signed webhooks to the ingress and prints the replies the
    /// platform delivers to a local Graph API stand-in. Run the platform
    /// with WHATSAPP_GRAPH_URL=http://<graph-listen>/v24.0.
    Simulate {
        /// Tenant id or client phone.
        #[arg(long)]
        tenant: String,
        /// Webhook URL of the ingress.
        #[arg(long, default_value = "http://127.0.0.1:8080/webhook")]
        ingress: String,
        /// Where the Graph API stand-in listens.
        #[arg(long, default_value = "127.0.0.1:8089")]
        graph_listen: SocketAddr,
        /// The customer's WhatsApp number.
        #[arg(long, default_value = "254711000111")]
        from: String,
        /// The customer's profile name.
        #[arg(long, default_value = "Demo Customer")]
        name: String,
        /// Message to send (repeatable); without it, lines are read from stdin.
        #[arg(long = "message", short = 'm')]
        messages: Vec<String>,
        /// Seconds to wait for each reply.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
}

#[derive(Subcommand)]
pub enum TenantCommand {
    /// Create or update a tenant from a YAML or JSON manifest (idempotent).
    Apply {
        /// The manifest file.
        #[arg(short = 'f', long = "file")]
        file: String,
    },
    /// List tenants.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one tenant (secrets masked).
    Show {
        /// Tenant id or client phone.
        tenant: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Go live: the tenant's bot starts answering.
    Activate {
        /// Tenant id or client phone.
        tenant: String,
    },
    /// Instant rollback: the tenant's bot stops answering (messages are still logged).
    Deactivate {
        /// Tenant id or client phone.
        tenant: String,
    },
    /// Issue a new webhook verify token and print it (paste it into Meta's
    /// dashboard); the old one is still accepted during the grace period.
    RotateVerifyToken {
        /// Tenant id or client phone.
        tenant: String,
        /// Hours the previous token stays valid.
        #[arg(long, default_value_t = 24)]
        grace_hours: u64,
    },
}

#[derive(Subcommand)]
pub enum ConversationCommand {
    /// List conversations currently handed to a person.
    List {
        /// Tenant id or client phone.
        #[arg(long)]
        tenant: String,
    },
    /// Let the bot answer a customer again before the pause ends.
    Resume {
        /// Tenant id or client phone.
        #[arg(long)]
        tenant: String,
        /// The customer's WhatsApp number.
        #[arg(long)]
        user: String,
    },
}

#[derive(Subcommand)]
pub enum TrainingCommand {
    /// Questions customers asked that the bot could not answer, grouped by
    /// meaning, most asked first.
    Candidates {
        /// Tenant id or client phone.
        #[arg(long)]
        tenant: String,
        /// open, taught, dismissed or all.
        #[arg(long, default_value = "open")]
        status: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Teach a candidate its answer: its question becomes an active FAQ
    /// entry.
    Teach {
        /// Tenant id or client phone.
        #[arg(long)]
        tenant: String,
        /// The candidate's id (from `training candidates`).
        #[arg(long)]
        id: uuid::Uuid,
        /// The answer customers asking this will get.
        #[arg(long)]
        answer: String,
    },
}

/// What a person or API token may do.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum RoleArg {
    /// Every tenant, people and tokens.
    PlatformAdmin,
    /// One tenant: its settings, templates, training data, conversations, usage.
    TenantAdmin,
    /// One tenant's conversations and messages; reads its settings.
    Agent,
}

impl From<RoleArg> for alphadome_admin::people::Role {
    fn from(r: RoleArg) -> Self {
        use alphadome_admin::people::Role;
        match r {
            RoleArg::PlatformAdmin => Role::PlatformAdmin,
            RoleArg::TenantAdmin => Role::TenantAdmin,
            RoleArg::Agent => Role::Agent,
        }
    }
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Add a person. The password is read from standard input (at least 12
    /// characters); when standard input is a terminal or empty, a random
    /// one is generated and printed once.
    Add {
        /// Their e-mail address (their login).
        email: String,
        #[arg(long, value_enum)]
        role: RoleArg,
        /// The tenant (id or client phone) of a tenant-admin or agent.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// List people (never their passwords).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Disable a person: they can no longer log in.
    Disable {
        /// Their e-mail address.
        email: String,
    },
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create an API token and print it (the only time it is shown: only
    /// its digest is stored).
    Create {
        /// A name to know it by (and revoke it by).
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        role: RoleArg,
        /// The tenant (id or client phone) of a tenant-admin or agent token.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a token: it is refused from then on.
    Revoke {
        /// The token's name.
        name: String,
    },
    /// List tokens (never the tokens themselves).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Print a new random master key (base64 of 32 bytes) for ALPHADOME_MASTER_KEY.
    Generate,
    /// Re-encrypt every stored credential under ALPHADOME_MASTER_KEY.
    ///
    /// Run the services with the new key in ALPHADOME_MASTER_KEY and the old
    /// ones in ALPHADOME_PREVIOUS_MASTER_KEYS first; once this reports every
    /// credential current, the old keys can be dropped.
    Rotate,
}

#[derive(Subcommand)]
pub enum DlqCommand {
    /// List the dead letters with their reasons.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-drive dead letters once their cause is fixed (never sends a reply twice).
    Replay {
        /// Sequence numbers to replay (from `dlq list`); all when omitted.
        seq: Vec<u64>,
    },
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check the credential audit trail's hash chain; fails on an edited or deleted row.
    Verify,
    /// Every change to the configuration, newest first: who, when, what, and
    /// the thing before and after (`--json`), secrets masked.
    Log {
        /// Only this tenant's changes (id or client phone).
        #[arg(long)]
        tenant: Option<String>,
        /// Only changes from this day on (YYYY-MM-DD).
        #[arg(long)]
        since: Option<String>,
        /// At most this many changes.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=10_000))]
        limit: i64,
        /// Print JSON, with the before and after of each change.
        #[arg(long)]
        json: bool,
    },
}

/// Removes the settings' environment variables that are set but empty, so
/// an empty variable counts as unset (as `docker-compose` passes
/// `VAR: ${VAR:-}`) instead of as an invalid value. Call before parsing,
/// while the process has one thread.
pub fn forget_empty_settings() {
    use clap::CommandFactory;
    let cmd = Cli::command();
    for arg in cmd.get_arguments() {
        if let Some(var) = arg.get_env() {
            if std::env::var_os(var).is_some_and(|v| v.is_empty()) {
                std::env::remove_var(var);
            }
        }
    }
}
