//! The store's schema: its migrations, one a version, and the rollup upsert.

/// Upserts one reading into a rollup table (`{table}` is `rollup_15m` or `rollup_1d`).
pub(super) fn rollup_upsert_sql(table: &str) -> String {
    format!(
        "INSERT INTO {table} (lamp_id, bucket_s, tenant, zone, readings, level_pct_sum,
            level_pct_min, level_pct_max, power_w_sum, energy_dwh, pedestrians, cyclists,
            vehicles, fault_readings)
         VALUES (?1, ?2, ?3, ?4, 1, ?5, ?5, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT (lamp_id, bucket_s) DO UPDATE SET
            readings = readings + 1,
            level_pct_sum = level_pct_sum + excluded.level_pct_sum,
            level_pct_min = min(level_pct_min, excluded.level_pct_min),
            level_pct_max = max(level_pct_max, excluded.level_pct_max),
            power_w_sum = power_w_sum + excluded.power_w_sum,
            energy_dwh = energy_dwh + excluded.energy_dwh,
            pedestrians = pedestrians + excluded.pedestrians,
            cyclists = cyclists + excluded.cyclists,
            vehicles = vehicles + excluded.vehicles,
            fault_readings = fault_readings + excluded.fault_readings"
    )
}

pub(super) const MIGRATIONS: &[&str] = &[
    // 1: nodes, readings, commands, rejections.
    "CREATE TABLE nodes (
        lamp_id INTEGER PRIMARY KEY,
        tenant TEXT NOT NULL,
        dev_eui TEXT NOT NULL UNIQUE,
        dev_addr INTEGER NOT NULL UNIQUE,
        zone INTEGER NOT NULL,
        lat REAL NOT NULL,
        lon REAL NOT NULL,
        rated_power_w REAL NOT NULL,
        mqtt_username TEXT NOT NULL UNIQUE,
        mqtt_password TEXT NOT NULL,
        nwk_s_key TEXT NOT NULL,
        app_s_key TEXT NOT NULL,
        last_fcnt_up INTEGER,
        next_fcnt_down INTEGER NOT NULL DEFAULT 0,
        last_energy_dwh INTEGER
     );
     CREATE INDEX nodes_tenant_zone ON nodes(tenant, zone);
     CREATE TABLE readings (
        lamp_id INTEGER NOT NULL,
        fcnt INTEGER NOT NULL,
        received_ms INTEGER NOT NULL,
        reading_time_s INTEGER NOT NULL,
        level_pct INTEGER NOT NULL,
        target_level_pct INTEGER NOT NULL,
        power_w REAL NOT NULL,
        energy_dwh INTEGER NOT NULL,
        energy_delta_dwh INTEGER NOT NULL,
        ambient_lux INTEGER NOT NULL,
        pedestrians INTEGER NOT NULL,
        cyclists INTEGER NOT NULL,
        vehicles INTEGER NOT NULL,
        faults INTEGER NOT NULL,
        mode TEXT NOT NULL,
        trigger TEXT NOT NULL,
        PRIMARY KEY (lamp_id, fcnt)
     ) WITHOUT ROWID;
     CREATE INDEX readings_time ON readings(received_ms);
     CREATE TABLE commands (
        id INTEGER PRIMARY KEY,
        lamp_id INTEGER NOT NULL,
        sent_ms INTEGER NOT NULL,
        level_pct INTEGER NOT NULL,
        ramp_ms INTEGER NOT NULL,
        reason TEXT NOT NULL,
        fcnt_down INTEGER NOT NULL
     );
     CREATE INDEX commands_lamp_time ON commands(lamp_id, sent_ms);
     CREATE TABLE rejections (
        id INTEGER PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        kind TEXT NOT NULL,
        detail TEXT NOT NULL
     );",
    // 2: history. A lamp's readings by the reading's own time; 15-minute and daily rollups
    // per lamp (kept for years after the raw readings go), with the zone in each row so a
    // zone's history is one index range; the spool of points for an InfluxDB sink; an index
    // for the audit export.
    "CREATE INDEX readings_lamp_time ON readings(lamp_id, reading_time_s);
     CREATE TABLE rollup_15m (
        lamp_id INTEGER NOT NULL,
        bucket_s INTEGER NOT NULL,
        tenant TEXT NOT NULL,
        zone INTEGER NOT NULL,
        readings INTEGER NOT NULL,
        level_pct_sum INTEGER NOT NULL,
        level_pct_min INTEGER NOT NULL,
        level_pct_max INTEGER NOT NULL,
        power_w_sum REAL NOT NULL,
        energy_dwh INTEGER NOT NULL,
        pedestrians INTEGER NOT NULL,
        cyclists INTEGER NOT NULL,
        vehicles INTEGER NOT NULL,
        fault_readings INTEGER NOT NULL,
        PRIMARY KEY (lamp_id, bucket_s)
     ) WITHOUT ROWID;
     CREATE INDEX rollup_15m_zone ON rollup_15m(tenant, zone, bucket_s);
     CREATE TABLE rollup_1d (
        lamp_id INTEGER NOT NULL,
        bucket_s INTEGER NOT NULL,
        tenant TEXT NOT NULL,
        zone INTEGER NOT NULL,
        readings INTEGER NOT NULL,
        level_pct_sum INTEGER NOT NULL,
        level_pct_min INTEGER NOT NULL,
        level_pct_max INTEGER NOT NULL,
        power_w_sum REAL NOT NULL,
        energy_dwh INTEGER NOT NULL,
        pedestrians INTEGER NOT NULL,
        cyclists INTEGER NOT NULL,
        vehicles INTEGER NOT NULL,
        fault_readings INTEGER NOT NULL,
        PRIMARY KEY (lamp_id, bucket_s)
     ) WITHOUT ROWID;
     CREATE INDEX rollup_1d_zone ON rollup_1d(tenant, zone, bucket_s);
     INSERT INTO rollup_15m
        SELECT r.lamp_id, r.reading_time_s / 900 * 900, n.tenant, n.zone, COUNT(*),
               SUM(r.level_pct), MIN(r.level_pct), MAX(r.level_pct), SUM(r.power_w),
               SUM(r.energy_delta_dwh), SUM(r.pedestrians), SUM(r.cyclists), SUM(r.vehicles),
               SUM(r.faults != 0)
        FROM readings r JOIN nodes n ON n.lamp_id = r.lamp_id
        GROUP BY r.lamp_id, r.reading_time_s / 900;
     INSERT INTO rollup_1d
        SELECT r.lamp_id, r.reading_time_s / 86400 * 86400, n.tenant, n.zone, COUNT(*),
               SUM(r.level_pct), MIN(r.level_pct), MAX(r.level_pct), SUM(r.power_w),
               SUM(r.energy_delta_dwh), SUM(r.pedestrians), SUM(r.cyclists), SUM(r.vehicles),
               SUM(r.faults != 0)
        FROM readings r JOIN nodes n ON n.lamp_id = r.lamp_id
        GROUP BY r.lamp_id, r.reading_time_s / 86400;
     CREATE INDEX commands_time ON commands(sent_ms);
     CREATE INDEX rejections_time ON rejections(at_ms);
     CREATE TABLE influx_spool (
        id INTEGER PRIMARY KEY,
        line TEXT NOT NULL
     );",
    // 3: faults, from raised to cleared, with who acknowledged and who cleared them and why
    // (an automatic clear has no user). Open faults are those without cleared_at_ms.
    "CREATE TABLE faults (
        id INTEGER PRIMARY KEY,
        tenant TEXT NOT NULL,
        lamp_id INTEGER NOT NULL,
        dev_eui TEXT NOT NULL,
        kind TEXT NOT NULL,
        raised_at_ms INTEGER NOT NULL,
        detail TEXT NOT NULL,
        acknowledged_by TEXT,
        acknowledged_at_ms INTEGER,
        acknowledged_note TEXT,
        cleared_at_ms INTEGER,
        cleared_by TEXT,
        cleared_note TEXT
     );
     CREATE INDEX faults_tenant_raised ON faults(tenant, raised_at_ms);
     CREATE INDEX faults_open ON faults(cleared_at_ms) WHERE cleared_at_ms IS NULL;
     CREATE INDEX faults_acknowledged ON faults(acknowledged_at_ms);
     CREATE INDEX faults_cleared ON faults(cleared_at_ms);",
    // 4: the energy summary reads a tenant's month from this index alone, however long the
    // history kept.
    "CREATE INDEX rollup_15m_tenant_time ON rollup_15m(tenant, bucket_s, lamp_id, energy_dwh);",
];
