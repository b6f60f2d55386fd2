//! What each `alphadome` command does: it reads the settings it needs,
//! calls the services' libraries, and prints the result (a table, or JSON).
//! No SQL here: every statement belongs to a service's store.

use std::time::Duration;

use alphadome_admin::manifest::{self, Manifest};
use alphadome_core::bus::Bus;
use alphadome_core::config::Settings;
use alphadome_core::crypto::Keyring;
use alphadome_core::{audit, db, telemetry, tenant, CancellationToken};
use anyhow::Context as _;

use crate::args::{
    AuditCommand, Cli, Command, ConversationCommand, DlqCommand, KeysCommand, TenantCommand,
    TokenCommand, TrainingCommand, UserCommand,
};
use crate::simulate::{self, SimulateOptions};
use crate::stack::{self, RunOptions, Service};

/// Runs the command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let s = &cli.settings;
    match cli.command {
        Command::Migrate => {
            let pool = pool(s).await?;
            db::migrate(&pool).await.context("migrations failed")?;
            println!(
                "migrations applied: {}",
                db::applied_migrations(&pool).await?
            );
        }
        Command::Tenant(cmd) => tenant_command(s, cmd).await?,
        Command::Keys(KeysCommand::Generate) => println!("{}", Keyring::generate_key()),
        Command::Keys(KeysCommand::Rotate) => rotate_keys(s).await?,
        Command::Dlq(cmd) => dlq_command(s, cmd).await?,
        Command::Audit(AuditCommand::Log {
            tenant,
            since,
            limit,
            json,
        }) => change_log(s, tenant.as_deref(), since.as_deref(), limit, json).await?,
        Command::Audit(AuditCommand::Verify) => {
            let check = audit::verify(&pool(s).await?).await?;
            match check.broken {
                None => println!("credential audit trail intact: {} rows", check.rows),
                Some((id, why)) => {
                    anyhow::bail!("credential audit trail broken at row {id}: {why}")
                }
            }
        }
        Command::Conversation(cmd) => conversation_command(s, cmd).await?,
        Command::Training(cmd) => training_command(s, cmd).await?,
        Command::User(cmd) => user_command(s, cmd).await?,
        Command::Token(cmd) => token_command(s, cmd).await?,
        Command::Usage {
            tenant,
            since,
            json,
        } => usage(s, &tenant, since.as_deref(), json).await?,
        Command::Up { no_migrate } => {
            let _telemetry = telemetry::init("alphadome", &s.telemetry());
            let mut opts = RunOptions::new(&Service::ALL);
            opts.migrate = !no_migrate;
            serve(s, opts).await?;
        }
        Command::Run { service } => {
            let _telemetry = telemetry::init(service.telemetry_name(), &s.telemetry());
            serve(s, RunOptions::new(&[service])).await?;
        }
        Command::Simulate {
            tenant,
            ingress,
            graph_listen,
            from,
            name,
            messages,
            timeout,
        } => {
            let pool = pool(s).await?;
            let keyring = s.keyring()?;
            let from = alphadome_admin::phone::normalize(&from, &s.default_country_code)
                .context("--from")?;
            simulate::run(
                &pool,
                &keyring,
                s.meta_app_secret.clone(),
                SimulateOptions {
                    tenant,
                    country_code: s.default_country_code.clone(),
                    ingress_url: ingress,
                    graph_listen,
                    from,
                    profile_name: name,
                    messages,
                    timeout: Duration::from_secs(timeout),
                },
            )
            .await?;
        }
    }
    Ok(())
}

/// A small owner pool for one command.
async fn pool(s: &Settings) -> anyhow::Result<sqlx::PgPool> {
    db::connect(&s.database_url()?, 4)
        .await
        .context("cannot connect to Postgres (DATABASE_URL)")
}

/// A NATS connection for announcing tenant changes; the command works
/// without one (services catch up by polling within seconds).
async fn bus_if_reachable(s: &Settings) -> Option<Bus> {
    tokio::time::timeout(
        Duration::from_secs(2),
        Bus::connect(&s.nats_url, &s.nats_prefix),
    )
    .await
    .ok()?
    .ok()
}

async fn serve(s: &Settings, opts: RunOptions) -> anyhow::Result<()> {
    let config = s.config()?;
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (ALPHADOME_HTTP_ADDR)",
                config.http_addr
            )
        })?;
    let shutdown = CancellationToken::new();
    stack::cancel_on_signals(shutdown.clone());
    stack::run(config, opts, listener, shutdown).await
}

async fn tenant_command(s: &Settings, cmd: TenantCommand) -> anyhow::Result<()> {
    let cc = s.default_country_code.as_str();
    match cmd {
        TenantCommand::Apply { file } => {
            let keyring = s.keyring()?;
            let manifest =
                Manifest::from_file(&file, cc).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
            let pool = pool(s).await?;
            let report = manifest::apply(&pool, &keyring, &manifest)
                .await
                .map_err(|e| anyhow::anyhow!("{file}: {}", alphadome_core::Report(&e)))?;
            if let Some(bus) = bus_if_reachable(s).await {
                tenant::announce_change(&bus, report.tenant_id).await;
            }
            let what = if report.created {
                "created"
            } else if report.rows_changed > 0 {
                "updated"
            } else {
                "unchanged"
            };
            eprintln!("tenant {what} ({} rows changed)", report.rows_changed);
            println!("{}", report.tenant_id);
        }
        TenantCommand::List { json } => {
            let tenants =
                alphadome_admin::list(&pool(s).await?, s.verify_token_max_age_days).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tenants)?);
            } else {
                print!("{}", crate::output::tenant_table(&tenants));
            }
        }
        TenantCommand::Show { tenant, json } => {
            let v = alphadome_admin::show(&pool(s).await?, &tenant, cc).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", crate::output::fields(&serde_json::to_value(&v)?));
            }
        }
        TenantCommand::RotateVerifyToken {
            tenant,
            grace_hours,
        } => {
            let pool = pool(s).await?;
            let bus = bus_if_reachable(s).await;
            let (id, token) = alphadome_admin::rotate_verify_token(
                &pool,
                bus.as_ref(),
                &tenant,
                cc,
                Duration::from_secs(grace_hours * 3600),
            )
            .await?;
            eprintln!("new verify token for tenant {id}; the previous one is accepted for {grace_hours} h. It is shown only now:");
            println!("{token}");
        }
        TenantCommand::Activate { tenant } => set_active(s, &tenant, true).await?,
        TenantCommand::Deactivate { tenant } => set_active(s, &tenant, false).await?,
    }
    Ok(())
}

async fn set_active(s: &Settings, tenant: &str, active: bool) -> anyhow::Result<()> {
    let pool = pool(s).await?;
    let bus = bus_if_reachable(s).await;
    let (id, changed) =
        alphadome_admin::set_active(&pool, bus.as_ref(), tenant, &s.default_country_code, active)
            .await?;
    let state = if active { "active" } else { "inactive" };
    if changed {
        println!("tenant {id} is now {state}");
    } else {
        println!("tenant {id} was already {state}");
    }
    Ok(())
}

async fn rotate_keys(s: &Settings) -> anyhow::Result<()> {
    let keyring = s.keyring()?;
    let pool = pool(s).await?;
    let report = alphadome_admin::rotate_master_key(&pool, &keyring, |done, total| {
        if done % 100 == 0 || done == total {
            eprintln!("re-encrypted {done}/{total}");
        }
    })
    .await?;
    println!(
        "credentials: {} in all, {} re-encrypted under key {}, {} already current, {} failed",
        report.total,
        report.rotated,
        keyring.current_key_id(),
        report.current,
        report.failed.len()
    );
    if !report.failed.is_empty() {
        anyhow::bail!(
            "{} credential(s) could not be decrypted with any configured key: {}",
            report.failed.len(),
            report.failed.join("; ")
        );
    }
    Ok(())
}

async fn dlq_command(s: &Settings, cmd: DlqCommand) -> anyhow::Result<()> {
    let bus = Bus::connect(&s.nats_url, &s.nats_prefix).await?;
    match cmd {
        DlqCommand::List { json } => {
            let letters = alphadome_admin::dlq::list(&bus).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&letters)?);
            } else {
                print!("{}", crate::output::letter_table(&letters));
            }
        }
        DlqCommand::Replay { seq } => {
            let only = (!seq.is_empty()).then_some(seq.as_slice());
            let n = alphadome_admin::dlq::replay(&bus, only).await?;
            println!("replayed {n} dead letter(s)");
        }
    }
    Ok(())
}

async fn conversation_command(s: &Settings, cmd: ConversationCommand) -> anyhow::Result<()> {
    let pool = pool(s).await?;
    let cc = s.default_country_code.as_str();
    match cmd {
        ConversationCommand::List { tenant } => {
            let t = alphadome_admin::tenants::find(&pool, &tenant, cc).await?;
            let handoffs = alphadome_core::handoff::active_handoffs(&pool, t.id).await?;
            print!("{}", crate::output::handoff_table(&handoffs));
        }
        ConversationCommand::Resume { tenant, user } => {
            let t = alphadome_admin::tenants::find(&pool, &tenant, cc).await?;
            let user = alphadome_admin::phone::normalize(&user, cc).context("--user")?;
            if alphadome_core::handoff::resume_handoff(&pool, t.id, &user).await? {
                println!("the bot answers {user} again");
            } else {
                println!("no conversation with {user} is handed to a person");
            }
        }
    }
    Ok(())
}

async fn training_command(s: &Settings, cmd: TrainingCommand) -> anyhow::Result<()> {
    use alphadome_core::training;
    let pool = pool(s).await?;
    let cc = s.default_country_code.as_str();
    match cmd {
        TrainingCommand::Candidates {
            tenant,
            status,
            json,
        } => {
            let t = alphadome_admin::tenants::find(&pool, &tenant, cc).await?;
            let status = match status.as_str() {
                "all" => None,
                "open" | "taught" | "dismissed" => Some(status.as_str()),
                other => anyhow::bail!("--status: {other:?} is not open, taught, dismissed or all"),
            };
            let mut tx = alphadome_core::db::scoped(&pool, t.id).await?;
            let found = training::candidates(&mut tx, t.id, status, 500).await?;
            tx.commit().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&found)?);
            } else {
                print!("{}", crate::output::candidate_table(&found));
            }
        }
        TrainingCommand::Teach { tenant, id, answer } => {
            let t = alphadome_admin::tenants::find(&pool, &tenant, cc).await?;
            let actor = alphadome_admin::changes::cli_actor();
            let mut tx = alphadome_core::db::scoped(&pool, t.id).await?;
            let before = training::candidate(&mut tx, t.id, id)
                .await?
                .ok_or_else(|| {
                    anyhow::anyhow!("--id: tenant {} has no training candidate {id}", t.id)
                })?;
            let entry = training::teach(&mut tx, t.id, id, &answer, &actor)
                .await
                .map_err(|e| anyhow::anyhow!("--answer: {e}"))?;
            let after = training::candidate(&mut tx, t.id, id).await?;
            alphadome_admin::changes::record(
                &mut tx,
                &alphadome_admin::changes::Change {
                    actor: &actor,
                    tenant: Some(t.id),
                    action: "training_candidate.teach",
                    subject: &id.to_string(),
                    before: serde_json::to_value(&before).ok(),
                    after: after.and_then(|a| serde_json::to_value(a).ok()),
                },
            )
            .await?;
            tx.commit().await?;
            if let Some(bus) = bus_if_reachable(s).await {
                tenant::announce_change(&bus, t.id).await;
            }
            println!(
                "taught: customers asking {:?} now get this answer (FAQ entry {entry})",
                before.question
            );
        }
    }
    Ok(())
}

async fn user_command(s: &Settings, cmd: UserCommand) -> anyhow::Result<()> {
    use alphadome_admin::people;
    use secrecy::ExposeSecret;
    let pool = pool(s).await?;
    match cmd {
        UserCommand::Add {
            email,
            role,
            tenant,
        } => {
            let (password, generated) = match password_from_stdin()? {
                Some(p) => (p, false),
                None => (people::generate_password(), true),
            };
            people::add_user(
                &pool,
                &email,
                role.into(),
                tenant.as_deref(),
                &password,
                &s.default_country_code,
                &alphadome_admin::changes::cli_actor(),
            )
            .await?;
            if generated {
                eprintln!("added {email}; their password, shown only now:");
                println!("{}", password.expose_secret());
            } else {
                eprintln!("added {email}");
            }
        }
        UserCommand::List { json } => {
            let users = people::list_users(&pool).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&users)?);
            } else {
                print!("{}", crate::output::user_table(&users));
            }
        }
        UserCommand::Disable { email } => {
            if people::disable_user(&pool, &email, &alphadome_admin::changes::cli_actor()).await? {
                println!("{email} is disabled");
            } else {
                println!("{email} was already disabled");
            }
        }
    }
    Ok(())
}

/// A password piped to standard input (its final line break removed), or
/// `None` when standard input is a terminal (nothing is read: a typed
/// password would show) or empty.
fn password_from_stdin() -> anyhow::Result<Option<secrecy::SecretString>> {
    use std::io::{IsTerminal as _, Read as _};
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Ok(None);
    }
    let mut raw = String::new();
    stdin
        .lock()
        .read_to_string(&mut raw)
        .context("the password on standard input is not UTF-8 text")?;
    let password = raw.strip_suffix('\n').unwrap_or(&raw);
    let password = password.strip_suffix('\r').unwrap_or(password);
    Ok((!password.is_empty()).then(|| secrecy::SecretString::from(password.to_owned())))
}

async fn token_command(s: &Settings, cmd: TokenCommand) -> anyhow::Result<()> {
    use alphadome_admin::people;
    use secrecy::ExposeSecret;
    let pool = pool(s).await?;
    match cmd {
        TokenCommand::Create { name, role, tenant } => {
            let token = people::create_token(
                &pool,
                &name,
                role.into(),
                tenant.as_deref(),
                &s.default_country_code,
                &alphadome_admin::changes::cli_actor(),
            )
            .await?;
            eprintln!("token {name} created; it is shown only now:");
            println!("{}", token.expose_secret());
        }
        TokenCommand::Revoke { name } => {
            people::revoke_token(&pool, &name, &alphadome_admin::changes::cli_actor()).await?;
            println!("token {name} is revoked");
        }
        TokenCommand::List { json } => {
            let tokens = people::list_tokens(&pool).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tokens)?);
            } else {
                print!("{}", crate::output::token_table(&tokens));
            }
        }
    }
    Ok(())
}

/// `--since YYYY-MM-DD`, or `None` when not given.
fn since_date(since: Option<&str>) -> anyhow::Result<Option<chrono::NaiveDate>> {
    since
        .map(|d| {
            chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d")
                .with_context(|| format!("--since {d:?} is not a date (YYYY-MM-DD)"))
        })
        .transpose()
}

async fn change_log(
    s: &Settings,
    tenant: Option<&str>,
    since: Option<&str>,
    limit: i64,
    json: bool,
) -> anyhow::Result<()> {
    let since = since_date(since)?.map(|d| d.and_time(chrono::NaiveTime::MIN).and_utc());
    let pool = pool(s).await?;
    let tenant = match tenant {
        Some(t) => Some(
            alphadome_admin::tenants::find(&pool, t, &s.default_country_code)
                .await?
                .id,
        ),
        None => None,
    };
    let records = alphadome_admin::changes::list(&pool, tenant, since, limit).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&records)?);
    } else {
        print!("{}", crate::output::change_table(&records));
    }
    Ok(())
}

async fn usage(s: &Settings, tenant: &str, since: Option<&str>, json: bool) -> anyhow::Result<()> {
    let since = match since_date(since)? {
        Some(d) => d,
        None => (chrono::Utc::now() - chrono::Duration::days(30)).date_naive(),
    };
    let pool = pool(s).await?;
    let t = alphadome_admin::tenants::find(&pool, tenant, &s.default_country_code).await?;
    let days = alphadome_logger::store::usage(&pool, t.id, since).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&days)?);
    } else {
        print!("{}", crate::output::usage_table(&days));
    }
    Ok(())
}
