//! `lamplighter users add|list|passwd|set-role|remove` and `lamplighter tokens add`: accounts for the dashboard and its
//! API, written to `<data-dir>/accounts.sqlite` (WAL), which the running server reads on
//! every request, so both work while the system runs. The work is in
//! `lamplighter_dashboards::accounts`.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use lamplighter_dashboards::accounts::{self, Accounts, Role};
use lamplighter_dashboards::wall_ms;
use lamplighter_protocol::TenantId;

#[derive(Subcommand)]
pub enum UsersCommand {
    /// Adds a dashboard user; the password is read from standard input (one line).
    Add(UserAddArgs),
    /// Lists the users (never their passwords).
    List {
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Sets a user's password, read from standard input (one line), and ends their sessions:
    /// the way back in for an admin who forgot theirs.
    Passwd {
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        username: String,
    },
    /// Changes a user's role.
    SetRole {
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        username: String,
        /// viewer | operator | admin
        #[arg(long)]
        role: String,
    },
    /// Removes a user and ends their sessions.
    Remove {
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        username: String,
    },
}

#[derive(Args)]
pub struct UserAddArgs {
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[arg(long)]
    pub username: String,
    /// viewer | operator | admin
    #[arg(long)]
    pub role: String,
    /// The tenant whose lamps the user sees; without it, every tenant's.
    #[arg(long)]
    pub tenant: Option<String>,
}

#[derive(Subcommand)]
pub enum TokensCommand {
    /// Creates an API token (for `Authorization: Bearer TOKEN`) and prints it once.
    Add(TokenAddArgs),
}

#[derive(Args)]
pub struct TokenAddArgs {
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// viewer | operator | admin
    #[arg(long)]
    pub role: String,
    /// The tenant whose lamps the token sees; without it, every tenant's.
    #[arg(long)]
    pub tenant: Option<String>,
    /// What the token is for (shown in the audit log), e.g. "grafana".
    #[arg(long, default_value = "")]
    pub label: String,
}

fn data_dir(d: Option<PathBuf>) -> Result<PathBuf> {
    match d {
        Some(d) => Ok(d),
        None => crate::system::default_data_dir(),
    }
}

fn tenant(t: Option<&str>) -> Result<Option<TenantId>> {
    t.map(|t| TenantId::new(t).with_context(|| format!("invalid --tenant {t:?}")))
        .transpose()
}

fn role(r: &str) -> Result<Role> {
    r.parse::<Role>().map_err(anyhow::Error::from)
}

pub fn run_users(command: UsersCommand) -> Result<()> {
    match command {
        UsersCommand::Add(args) => {
            let role = role(&args.role)?;
            let tenant = tenant(args.tenant.as_deref())?;
            accounts::validate_username(&args.username)?;
            let password = password_from_stdin()?;
            let dir = data_dir(args.data_dir)?;
            let mut accounts = Accounts::open(&dir)?;
            accounts.add_user(&args.username, &password, role, tenant.as_ref(), wall_ms())?;
            eprintln!(
                "lamplighter: added {} ({role}{}) to {}",
                args.username,
                tenant
                    .as_ref()
                    .map_or(String::new(), |t| format!(", tenant {t}")),
                accounts.path().display()
            );
            Ok(())
        }
        UsersCommand::List { data_dir: d } => {
            let accounts = Accounts::open(&data_dir(d)?)?;
            crate::lamplighter_print_line!("username,role,tenant");
            for u in accounts.users(None)? {
                crate::lamplighter_print_line!(
                    "{},{},{}",
                    u.username,
                    u.role,
                    u.tenant.as_ref().map_or("", |t| t.as_str())
                );
            }
            Ok(())
        }
        UsersCommand::Passwd {
            data_dir: d,
            username,
        } => {
            let password = password_from_stdin()?;
            let mut accounts = Accounts::open(&data_dir(d)?)?;
            if !accounts.update_user(&username, None, Some(&password))? {
                anyhow::bail!("no user {username:?} in {}", accounts.path().display());
            }
            eprintln!("lamplighter: new password for {username}; their sessions ended");
            Ok(())
        }
        UsersCommand::SetRole {
            data_dir: d,
            username,
            role: r,
        } => {
            let role = role(&r)?;
            let mut accounts = Accounts::open(&data_dir(d)?)?;
            if !accounts.update_user(&username, Some(role), None)? {
                anyhow::bail!("no user {username:?} in {}", accounts.path().display());
            }
            eprintln!("lamplighter: {username} is now {role}");
            Ok(())
        }
        UsersCommand::Remove {
            data_dir: d,
            username,
        } => {
            let mut accounts = Accounts::open(&data_dir(d)?)?;
            if !accounts.remove_user(&username)? {
                anyhow::bail!("no user {username:?} in {}", accounts.path().display());
            }
            eprintln!("lamplighter: removed {username}");
            Ok(())
        }
    }
}

/// One line of standard input: a password is never an argument (it would sit in the shell's
/// history and the process list).
fn password_from_stdin() -> Result<String> {
    let mut input = String::new();
    std::io::stdin()
        .take(accounts::MAX_PASSWORD_BYTES as u64 + 2)
        .read_to_string(&mut input)
        .context("cannot read the password from standard input")?;
    Ok(input.lines().next().unwrap_or("").to_string())
}

pub fn run_tokens(command: TokensCommand) -> Result<()> {
    match command {
        TokensCommand::Add(args) => {
            let role = role(&args.role)?;
            let tenant = tenant(args.tenant.as_deref())?;
            let mut accounts = Accounts::open(&data_dir(args.data_dir)?)?;
            let token = accounts.add_token(role, tenant.as_ref(), &args.label, wall_ms())?;
            crate::lamplighter_print_line!("{token}");
            Ok(())
        }
    }
}

/// `demo`'s admin: when the data directory has no user yet, creates `admin` with a random
/// password and prints the login once on stderr. There is no default password.
pub fn ensure_demo_admin(data_dir: &Path) -> Result<()> {
    let mut accounts = Accounts::open(data_dir)?;
    if !accounts.users(None)?.is_empty() {
        eprintln!(
            "lamplighter demo: dashboard accounts exist in {}; log in with yours \
             (add one with `lamplighter users add`)",
            accounts.path().display()
        );
        return Ok(());
    }
    let password = accounts::random_password();
    accounts.add_user("admin", &password, Role::Admin, None, wall_ms())?;
    eprintln!("lamplighter demo: dashboard login: admin / {password}  (shown once)");
    Ok(())
}

/// A town's roads as the dashboard draws them, under `tenant`.
pub fn town_roads(
    town: &lamplighter_town::Town,
    tenant: &TenantId,
) -> Vec<(TenantId, lamplighter_dashboards::Road)> {
    town.roads
        .iter()
        .filter(|r| r.points.len() >= 2)
        .map(|r| {
            (
                tenant.clone(),
                lamplighter_dashboards::Road {
                    class: Some(r.kind.design_class().to_string()),
                    points: r.points.iter().map(|&(lat, lon)| [lat, lon]).collect(),
                },
            )
        })
        .collect()
}
