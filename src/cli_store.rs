//! `lamplighter export`, `lamplighter backup`, and the `--influx-*` flags of `demo` and
//! `serve`. The work is in `lamplighter_controller::store` and `::influx`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use lamplighter_controller::influx::InfluxConfig;
use lamplighter_controller::store::{self, ExportWhat, Store};
use lamplighter_protocol::local_time::{days_of_date, TimeZone};

/// The environment variable that holds the InfluxDB API token.
pub const INFLUX_TOKEN_ENV: &str = "LAMPLIGHTER_INFLUX_TOKEN";

/// Also write readings, commands and zone points to an InfluxDB v2 write API (the token is
/// read from LAMPLIGHTER_INFLUX_TOKEN).
#[derive(Args, Debug, Clone, Default)]
pub struct InfluxArgs {
    /// e.g. http://127.0.0.1:8086
    #[arg(long)]
    pub influx_url: Option<String>,
    #[arg(long, requires = "influx_url")]
    pub influx_org: Option<String>,
    #[arg(long, requires = "influx_url")]
    pub influx_bucket: Option<String>,
    /// The most the InfluxDB spool holds while the server is away, MiB (default 256);
    /// beyond it the oldest points are dropped (they stay in the store).
    #[arg(long, requires = "influx_url")]
    pub influx_spool_max_mib: Option<u64>,
}

impl InfluxArgs {
    pub fn config(&self) -> Result<Option<InfluxConfig>> {
        let Some(url) = &self.influx_url else {
            return Ok(None);
        };
        let (Some(org), Some(bucket)) = (&self.influx_org, &self.influx_bucket) else {
            anyhow::bail!("--influx-url needs --influx-org and --influx-bucket");
        };
        let token = std::env::var(INFLUX_TOKEN_ENV).unwrap_or_default();
        let mut config = InfluxConfig::new(url, org, bucket, &token).map_err(anyhow::Error::msg)?;
        if let Some(mib) = self.influx_spool_max_mib {
            anyhow::ensure!(mib > 0, "--influx-spool-max-mib must be positive");
            config.spool_max_bytes = mib.saturating_mul(1024 * 1024);
        }
        Ok(Some(config))
    }
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// First day (YYYY-MM-DD, UTC) or Unix seconds; inclusive.
    #[arg(long)]
    pub from: String,
    /// Last day (YYYY-MM-DD, UTC: the whole day is included) or Unix seconds (exclusive).
    #[arg(long)]
    pub to: String,
    /// readings | energy | audit | half-hourly (consumption per lamp and half-hour, for
    /// unmetered-supply billing)
    #[arg(long)]
    pub what: ExportWhat,
    /// half-hourly: the deployment's IANA time zone ([controller.policy] time_zone); dates
    /// in --from and --to are then its local days, and its days number their periods.
    #[arg(long, default_value = "Europe/London")]
    pub time_zone: TimeZone,
    /// half-hourly: only this tenant's lamps.
    #[arg(long)]
    pub tenant: Option<String>,
    /// csv (the only format)
    #[arg(long, default_value = "csv")]
    pub format: String,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Write here instead of standard output.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// The backup file to write (replaced if it exists).
    pub file: PathBuf,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// `YYYY-MM-DD` (midnight in `time_zone`) or Unix seconds. `end` moves a date to the next
/// midnight.
pub fn parse_time(s: &str, end: bool, time_zone: TimeZone) -> Result<i64> {
    if let Ok(t) = s.parse::<i64>() {
        return Ok(t);
    }
    let date = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|_| anyhow::anyhow!("expected YYYY-MM-DD or Unix seconds, got {s:?}"))?;
    let day = days_of_date(date) + end as i64;
    Ok((time_zone.instants_at_local(day, 0).0 .0 / 1000) as i64)
}

fn data_dir(dir: Option<PathBuf>) -> Result<PathBuf> {
    let dir = match dir {
        Some(d) => d,
        None => crate::system::default_data_dir()?,
    };
    anyhow::ensure!(
        dir.join(store::DB_FILE).exists(),
        "no store in {} (run `lamplighter demo` or `serve` with that --data-dir first)",
        dir.display()
    );
    Ok(dir)
}

pub fn export(args: ExportArgs) -> Result<()> {
    anyhow::ensure!(
        args.format == "csv",
        "--format: only csv is supported, got {:?}",
        args.format
    );
    // Half-hourly dates are local days; the other exports' are UTC ones.
    let days_in = match args.what {
        ExportWhat::HalfHourly => args.time_zone,
        _ => TimeZone::UTC,
    };
    let from = parse_time(&args.from, false, days_in).context("--from")?;
    let to = parse_time(&args.to, true, days_in).context("--to")?;
    anyhow::ensure!(from < to, "--from must be before --to");
    let dir = data_dir(args.data_dir)?;
    let store = Store::open_read_only(&dir)?;
    let out: Box<dyn std::io::Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let rows = if args.what == ExportWhat::HalfHourly {
        let tenant = args
            .tenant
            .as_deref()
            .map(lamplighter_protocol::TenantId::new)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--tenant: {e}"))?;
        store.half_hourly_csv(tenant.as_ref(), from, to, args.time_zone, out)?
    } else {
        store.export_csv(args.what, from, to, out)?
    };
    eprintln!("lamplighter: exported {rows} rows");
    Ok(())
}

pub fn backup(args: BackupArgs) -> Result<()> {
    let dir = data_dir(args.data_dir)?;
    let pages = store::backup(&dir, &args.file)?;
    let bytes = std::fs::metadata(&args.file).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "lamplighter: backed up {} ({pages} pages, {bytes} bytes) to {}",
        dir.join(store::DB_FILE).display(),
        args.file.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{parse_time, TimeZone};

    #[test]
    fn dates_parse_to_midnights_in_the_time_zone_given() {
        let utc = TimeZone::UTC;
        assert_eq!(parse_time("1970-01-01", false, utc).unwrap(), 0);
        assert_eq!(parse_time("1970-01-01", true, utc).unwrap(), 86_400);
        assert_eq!(parse_time("2024-12-21", false, utc).unwrap(), 1_734_739_200);
        assert_eq!(parse_time("1734818400", true, utc).unwrap(), 1_734_818_400);
        assert!(parse_time("2024-13-01", false, utc).is_err());
        assert!(parse_time("yesterday", false, utc).is_err());
        // A London summer day starts at 23:00 UTC the day before.
        let london = TimeZone::named("Europe/London").unwrap();
        assert_eq!(
            parse_time("2025-07-01", false, london).unwrap(),
            1_751_324_400
        );
    }
}
