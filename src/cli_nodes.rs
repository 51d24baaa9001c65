//! `lamplighter nodes ...`: provisioning for a real deployment.
//!
//! `nodes import` reads the lamps a council is installing from a CSV file (one row a lamp:
//! `tenant,zone,latitude,longitude[,rated_power_w]`), provisions each with a DevEUI, a DevAddr,
//! session keys and MQTT credentials, and prints how many it added. `nodes export` prints
//! them back for the installers. `nodes device-ids` names lamps on a tenant's own network
//! (The Things Stack addresses downlinks by device ID, not DevEUI), so commands reach them
//! from the first start, before any uplink has named them. The controller loads nodes and
//! device IDs when it starts; restart `serve` after either.

use std::path::Path;

use anyhow::{bail, Context, Result};
use lamplighter_broker::external_state::ExternalState;
use lamplighter_controller::store::{NewNode, Store};
use lamplighter_protocol::{DevEui, LampId, TenantId, ZoneId};

/// The default rated power of a lamp whose row gives none, W.
const DEFAULT_RATED_POWER_W: f32 = 40.0;

/// Parses the import file, refusing the whole file on the first bad row (with its line).
pub fn parse_import(text: &str, first_lamp_id: u32) -> Result<Vec<NewNode>> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((_, header)) = lines.next() else {
        bail!("the import file is empty; expected a header tenant,zone,latitude,longitude[,rated_power_w]");
    };
    let columns: Vec<&str> = header.split(',').map(str::trim).collect();
    let expected = ["tenant", "zone", "latitude", "longitude"];
    if columns.len() < 4
        || columns[..4] != expected
        || columns.get(4).is_some_and(|c| *c != "rated_power_w")
    {
        bail!("header must be tenant,zone,latitude,longitude[,rated_power_w], got {header:?}");
    }
    let mut nodes = Vec::new();
    for (i, line) in lines {
        let n = i + 1;
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != columns.len() {
            bail!(
                "line {n}: expected {} fields, got {}",
                columns.len(),
                fields.len()
            );
        }
        let tenant = TenantId::new(fields[0]).with_context(|| format!("line {n}"))?;
        let zone: u32 = fields[1].parse().with_context(|| {
            format!("line {n}: zone must be a whole number, got {:?}", fields[1])
        })?;
        let lat: f64 = fields[2]
            .parse()
            .ok()
            .filter(|v| (-90.0..=90.0).contains(v))
            .with_context(|| {
                format!(
                    "line {n}: latitude must be a number in -90..90, got {:?}",
                    fields[2]
                )
            })?;
        let lon: f64 = fields[3]
            .parse()
            .ok()
            .filter(|v| (-180.0..=180.0).contains(v))
            .with_context(|| {
                format!(
                    "line {n}: longitude must be a number in -180..180, got {:?}",
                    fields[3]
                )
            })?;
        let rated_power_w = match fields.get(4) {
            None => DEFAULT_RATED_POWER_W,
            Some(s) => s
                .parse()
                .ok()
                .filter(|w: &f32| *w > 0.0 && *w <= 2000.0)
                .with_context(|| {
                    format!("line {n}: rated_power_w must be in (0, 2000] W, got {s:?}")
                })?,
        };
        nodes.push(NewNode {
            lamp: LampId(first_lamp_id + nodes.len() as u32),
            tenant,
            zone: ZoneId(zone),
            lat,
            lon,
            rated_power_w,
        });
    }
    Ok(nodes)
}

pub fn import(data_dir: &Path, file: &Path) -> Result<usize> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut store = Store::open(data_dir)?;
    let first = store
        .nodes()?
        .iter()
        .map(|s| s.node.lamp.0 + 1)
        .max()
        .unwrap_or(0);
    let nodes = parse_import(&text, first).with_context(|| format!("{}", file.display()))?;
    Ok(store.provision(&nodes)?)
}

/// The Things Stack's rule for a device ID: 2-36 characters, lower-case letters and digits,
/// single hyphens between them.
fn valid_device_id(id: &str) -> bool {
    (2..=36).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
        && !id.ends_with('-')
        && !id.contains("--")
}

/// Parses a device-ID file (`dev_eui,device_id`, one row a lamp) against the provisioned
/// nodes, refusing the whole file on the first bad row (with its line): a DevEUI that is not
/// provisioned, a malformed ID, or a DevEUI or ID given twice.
pub fn parse_device_ids(
    text: &str,
    provisioned: &[(TenantId, DevEui)],
) -> Result<Vec<(TenantId, DevEui, String)>> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((_, header)) = lines.next() else {
        bail!("the device-ID file is empty; expected a header dev_eui,device_id");
    };
    let columns: Vec<&str> = header.split(',').map(str::trim).collect();
    if columns != ["dev_eui", "device_id"] {
        bail!("header must be dev_eui,device_id, got {header:?}");
    }
    let mut out: Vec<(TenantId, DevEui, String)> = Vec::new();
    for (i, line) in lines {
        let n = i + 1;
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let [eui, id] = fields[..] else {
            bail!("line {n}: expected 2 fields, got {}", fields.len());
        };
        let dev_eui: DevEui = eui.parse().map_err(|e| {
            anyhow::anyhow!("line {n}: dev_eui must be 16 hex digits, got {eui:?} ({e})")
        })?;
        let Some((tenant, _)) = provisioned.iter().find(|(_, e)| *e == dev_eui) else {
            bail!("line {n}: no provisioned node has DevEUI {dev_eui}");
        };
        if !valid_device_id(id) {
            bail!(
                "line {n}: device_id must be 2-36 lower-case letters, digits and single \
                 hyphens, got {id:?}"
            );
        }
        if out.iter().any(|(_, e, _)| *e == dev_eui) {
            bail!("line {n}: DevEUI {dev_eui} is given twice");
        }
        if out.iter().any(|(t, _, d)| t == tenant && d == id) {
            bail!("line {n}: device_id {id:?} is given twice in tenant {tenant}");
        }
        out.push((tenant.clone(), dev_eui, id.to_string()));
    }
    Ok(out)
}

/// Sets the device IDs in `file` for the nodes in `data_dir`; returns how many.
pub fn import_device_ids(data_dir: &Path, file: &Path) -> Result<usize> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let provisioned: Vec<(TenantId, DevEui)> = Store::open(data_dir)?
        .nodes()?
        .into_iter()
        .map(|s| (s.node.tenant, s.node.dev_eui))
        .collect();
    let rows =
        parse_device_ids(&text, &provisioned).with_context(|| format!("{}", file.display()))?;
    let state = ExternalState::open(data_dir)?;
    for (tenant, dev_eui, id) in &rows {
        state.set_device_id(tenant, *dev_eui, id)?;
    }
    Ok(rows.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_id_rows_are_checked_against_the_provisioned_nodes() {
        let bath = TenantId::new("bath").unwrap();
        let provisioned = [
            (bath.clone(), DevEui(0x70B3_D500_0000_0001)),
            (bath.clone(), DevEui(2)),
        ];
        let good = "dev_eui,device_id\n70B3D50000000001,lamp-1\n0000000000000002,lamp-2\n";
        let rows = parse_device_ids(good, &provisioned).unwrap();
        assert_eq!(
            rows[0],
            (bath.clone(), DevEui(0x70B3_D500_0000_0001), "lamp-1".into())
        );
        assert_eq!(rows.len(), 2);
        for (text, expect) in [
            ("", "empty"),
            ("device_id,dev_eui\n", "header"),
            ("dev_eui,device_id\nxyz,lamp-1\n", "line 2: dev_eui"),
            (
                "dev_eui,device_id\n0000000000000003,lamp-3\n",
                "line 2: no provisioned",
            ),
            (
                "dev_eui,device_id\n0000000000000002,Lamp_2\n",
                "line 2: device_id",
            ),
            (
                "dev_eui,device_id\n0000000000000002,-lamp\n",
                "line 2: device_id",
            ),
            (
                "dev_eui,device_id\n0000000000000002,a--b\n",
                "line 2: device_id",
            ),
            (
                "dev_eui,device_id\n0000000000000002\n",
                "line 2: expected 2",
            ),
            (
                "dev_eui,device_id\n0000000000000002,a\n0000000000000002,b\n",
                "line 2: device_id",
            ),
            (
                "dev_eui,device_id\n0000000000000002,ab\n0000000000000002,cd\n",
                "line 3: DevEUI",
            ),
            (
                "dev_eui,device_id\n0000000000000002,ab\n70B3D50000000001,ab\n",
                "line 3: device_id \"ab\" is given twice",
            ),
        ] {
            let e = format!("{:#}", parse_device_ids(text, &provisioned).unwrap_err());
            assert!(e.contains(expect), "{text:?}: {e}");
        }
    }

    #[test]
    fn rows_become_numbered_lamps() {
        let text = "tenant,zone,latitude,longitude,rated_power_w\nbath,3,51.38,-2.36,36\nbath,3,51.381,-2.36,18.5\n";
        let nodes = parse_import(text, 10).unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[1].lamp, LampId(11));
        assert_eq!(nodes[1].rated_power_w, 18.5);
        let no_power = parse_import("tenant,zone,latitude,longitude\nbath,1,51,-2\n", 0).unwrap();
        assert_eq!(no_power[0].rated_power_w, DEFAULT_RATED_POWER_W);
    }

    #[test]
    fn bad_rows_name_their_line() {
        for (text, expect) in [
            ("", "empty"),
            ("zone,tenant,latitude,longitude\n", "header"),
            ("tenant,zone,latitude,longitude\nBath,1,51,-2\n", "line 2"),
            (
                "tenant,zone,latitude,longitude\nbath,x,51,-2\n",
                "line 2: zone",
            ),
            (
                "tenant,zone,latitude,longitude\nbath,1,51,-2\nbath,1,95,-2\n",
                "line 3: latitude",
            ),
            (
                "tenant,zone,latitude,longitude\nbath,1,51\n",
                "line 2: expected 4 fields",
            ),
            (
                "tenant,zone,latitude,longitude,rated_power_w\nbath,1,51,-2,0\n",
                "rated_power_w",
            ),
        ] {
            let e = format!("{:#}", parse_import(text, 0).unwrap_err());
            assert!(e.contains(expect), "{text:?}: {e}");
        }
    }
}
