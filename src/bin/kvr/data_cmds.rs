//! REPL commands of the data model beyond put/get/delete. Replies are one line: `OK`,
//! `CAS_FAILED`, JSON for listings, or `ERR <code>: <message>`.

use std::time::Duration;

use kvr::json::Json;
use kvr::{BatchWrite, EventKind, ReadConsistency, Replica, ScanRange};

use super::{done, err};

/// Runs a data-model command; `None` when `cmd` is not one of them.
pub fn execute(r: &Replica, cmd: &str, rest: &str) -> Option<String> {
    let args: Vec<&str> = rest.split_whitespace().collect();
    Some(match cmd {
        "putttl" => match (
            args.first(),
            args.get(1).and_then(|t| t.parse::<u64>().ok()),
        ) {
            (Some(k), Some(ttl)) => {
                let value = args.get(2..).map(|v| v.join(" ")).unwrap_or_default();
                done(r.put_with_ttl(k.as_bytes(), value.as_bytes(), Duration::from_millis(ttl)))
            }
            _ => "ERR usage: putttl KEY TTL_MS VALUE".into(),
        },
        "batch" => batch(r, &args),
        "cas" | "casnew" => cas(r, cmd, &args),
        "append" => match args.first() {
            Some(k) => done(r.append(k.as_bytes(), args[1..].join(" ").as_bytes())),
            None => "ERR usage: append KEY VALUE".into(),
        },
        "lget" => match r.get_with(rest.as_bytes(), ReadConsistency::Lease) {
            Ok(Some(v)) => String::from_utf8_lossy(&v).into_owned(),
            Ok(None) => "NOT_FOUND".into(),
            Err(e) => err(e),
        },
        "scan" | "prefix" => scan(r, cmd, &args),
        "watch" => watch(r, &args),
        "stats" => r.stats_json(),
        "backup" if !rest.is_empty() => done(r.backup(std::path::Path::new(rest))),
        "backup" => "ERR usage: backup PATH".into(),
        _ => return None,
    })
}

/// `batch put K V put K V del K ...`
fn batch(r: &Replica, args: &[&str]) -> String {
    let mut writes = Vec::new();
    let mut i = 0;
    while i < args.len() {
        match (args[i], args.get(i + 1), args.get(i + 2)) {
            ("put", Some(k), Some(v)) => {
                writes.push(BatchWrite::Put(k.as_bytes(), v.as_bytes()));
                i += 3;
            }
            ("del", Some(k), _) => {
                writes.push(BatchWrite::Delete(k.as_bytes()));
                i += 2;
            }
            _ => return "ERR usage: batch put KEY VALUE | del KEY ...".into(),
        }
    }
    done(r.batch(&writes))
}

/// `cas KEY EXPECTED NEW` and `casnew KEY NEW` (the key must be absent).
fn cas(r: &Replica, cmd: &str, args: &[&str]) -> String {
    let result = match (cmd, args) {
        ("cas", [k, expected, new]) => r.cas(
            k.as_bytes(),
            Some(expected.as_bytes()),
            Some(new.as_bytes()),
        ),
        ("casnew", [k, new]) => r.cas(k.as_bytes(), None, Some(new.as_bytes())),
        _ => return "ERR usage: cas KEY EXPECTED NEW | casnew KEY NEW".into(),
    };
    match result {
        Err(kvr::Error::CasFailed) => "CAS_FAILED".into(),
        other => done(other),
    }
}

/// `scan START END LIMIT` (`-` for an open end) and `prefix PREFIX LIMIT`; replies
/// `{"items":[["key","value"],...],"next":"key"|null}`.
fn scan(r: &Replica, cmd: &str, args: &[&str]) -> String {
    let open = |s: &str| {
        if s == "-" {
            String::new()
        } else {
            s.to_string()
        }
    };
    let (range_start, range_end, limit) = match (cmd, args) {
        ("scan", [s, e, l]) => (open(s), open(e), l.parse::<usize>()),
        ("prefix", [p, l]) => (open(p), String::new(), l.parse::<usize>()),
        _ => return "ERR usage: scan START END LIMIT | prefix PREFIX LIMIT".into(),
    };
    let Ok(limit) = limit else {
        return "ERR usage: LIMIT must be a number".into();
    };
    let range = if cmd == "scan" {
        ScanRange::Range {
            start: range_start.as_bytes(),
            end: range_end.as_bytes(),
        }
    } else {
        ScanRange::Prefix(range_start.as_bytes())
    };
    match r.scan(range, limit, ReadConsistency::Linearizable) {
        Ok(page) => {
            let mut j = Json::new();
            j.begin_object().key("items").begin_array();
            for (k, v) in &page.items {
                j.begin_array()
                    .str(&String::from_utf8_lossy(k))
                    .str(&String::from_utf8_lossy(v))
                    .end_array();
            }
            j.end_array().key("next");
            match &page.next {
                Some(n) => j.str(&String::from_utf8_lossy(n)),
                None => j.null(),
            };
            j.end_object();
            j.finish()
        }
        Err(e) => err(e),
    }
}

/// `watch PREFIX FROM_INDEX COUNT TIMEOUT_MS` (`-` for all keys): up to COUNT events, waiting
/// at most TIMEOUT_MS for each; replies `[{"index":..,"kind":"put","key":"..","value":".."}]`.
fn watch(r: &Replica, args: &[&str]) -> String {
    let parsed = match args {
        [p, from, count, timeout] => from
            .parse::<u64>()
            .ok()
            .zip(count.parse::<usize>().ok())
            .zip(timeout.parse::<u64>().ok())
            .map(|((f, c), t)| (*p, f, c, t)),
        _ => None,
    };
    let Some((prefix, from, count, timeout)) = parsed else {
        return "ERR usage: watch PREFIX FROM_INDEX COUNT TIMEOUT_MS".into();
    };
    let prefix = if prefix == "-" { "" } else { prefix };
    let mut w = match r.watch(prefix.as_bytes(), from) {
        Ok(w) => w,
        Err(e) => return err(e),
    };
    let mut j = Json::new();
    j.begin_array();
    for _ in 0..count {
        match w.next(Duration::from_millis(timeout)) {
            Ok(Some(e)) => {
                let kind = match e.kind {
                    EventKind::Put => "put",
                    EventKind::Delete => "delete",
                    EventKind::Expire => "expire",
                };
                j.begin_object()
                    .kv_u64("index", e.index)
                    .kv_str("kind", kind)
                    .kv_str("key", &String::from_utf8_lossy(&e.key))
                    .kv_str("value", &String::from_utf8_lossy(&e.value))
                    .end_object();
            }
            Ok(None) => break,
            Err(e) => return err(e),
        }
    }
    j.end_array();
    j.finish()
}
