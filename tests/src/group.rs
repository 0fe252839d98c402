//! A `weft` host's view of its consumer group, read over HTTP: which
//! partitions each member owns, when the group has settled. Shared by the
//! multi-host tests and the benchmark harness.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{process::Weft, wait_for};

/// How long a rebalance, a restore or the rest of a stream may take on a
/// busy machine.
pub const DEADLINE: Duration = Duration::from_secs(300);

/// GET `path` on `host`: the status and the JSON answer, whatever the
/// status (a 503 says which partitions are missing); `Err` if there is no
/// JSON answer at all.
pub fn ask(host: &Weft, path: &str) -> Result<(u16, Value), String> {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build();
    let response = match agent.get(&format!("{}{path}", host.base)).call() {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(format!("GET {}{path}: {e}", host.base)),
    };
    let code = response.status();
    let text = response
        .into_string()
        .map_err(|e| format!("GET {}{path}: {e}", host.base))?;
    let json = serde_json::from_str(&text)
        .map_err(|e| format!("GET {}{path}: {code} `{text}` is not JSON: {e}", host.base))?;
    Ok((code, json))
}

/// How many messages `host` counts as received (its own partitions only).
pub fn received(host: &Weft) -> Result<u64, String> {
    let status = host.try_get("/api/status")?;
    status["events"]["received"]
        .as_u64()
        .ok_or_else(|| format!("no received count in {status}"))
}

/// `host`'s view of the group: `status["group"]`.
pub fn group(host: &Weft) -> Result<Value, String> {
    let status = host.try_get("/api/status")?;
    match &status["group"] {
        group @ Value::Object(_) => Ok(group.clone()),
        _ => Err(format!("no group in the status of {}: {status}", host.base)),
    }
}

/// The partition numbers of `object[field]`, sorted.
pub fn numbers(object: &Value, field: &str) -> Result<Vec<u64>, String> {
    let list = object[field]
        .as_array()
        .ok_or_else(|| format!("no {field} list in {object}"))?;
    let mut partitions = list
        .iter()
        .map(|p| {
            p.as_u64()
                .ok_or_else(|| format!("a partition {p} in {object}"))
        })
        .collect::<Result<Vec<u64>, String>>()?;
    partitions.sort_unstable();
    Ok(partitions)
}

/// A member's partitions, sorted.
pub fn partitions(member: &Value) -> Result<Vec<u64>, String> {
    numbers(member, "partitions")
}

/// The partitions the host whose view `group` is owns: its member marked `me`.
pub fn owned(group: &Value) -> Result<Vec<u64>, String> {
    let members = group["members"]
        .as_array()
        .ok_or_else(|| format!("no members in {group}"))?;
    let mut me = members.iter().filter(|m| m["me"] == json!(true));
    match (me.next(), me.next()) {
        (Some(member), None) => partitions(member),
        _ => Err(format!("not exactly one member is `me` in {group}")),
    }
}

/// Waits until `hosts` own every one of the topic's `topic_partitions`
/// partitions between them, each host at least one, none twice, and none
/// restores any more; returns what each owns, in the order of `hosts`.
pub fn settled(what: &str, hosts: &[&Weft], topic_partitions: u64) -> Vec<Vec<u64>> {
    wait_for(what, DEADLINE, || {
        let mut each = Vec::new();
        for host in hosts {
            let group = group(host)?;
            let restoring = group["restoring"]
                .as_array()
                .ok_or_else(|| format!("no restoring list in {group}"))?;
            let owned = owned(&group)?;
            if owned.is_empty() || !restoring.is_empty() {
                return Err(format!("{} owns {owned:?}: {group}", host.base));
            }
            each.push(owned);
        }
        let mut all: Vec<u64> = each.concat();
        all.sort_unstable();
        if all == (0..topic_partitions).collect::<Vec<u64>>() {
            Ok(Some(each))
        } else {
            Err(format!("owned between them: {each:?}"))
        }
    })
}
