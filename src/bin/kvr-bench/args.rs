//! Command-line options.

use std::path::PathBuf;

use crate::peers;

pub const USAGE: &str = "\
usage: kvr-bench [--out DIR] [--concurrency 1,8,64,256] [--duration-s 10] [--warmup-s 3]
                 [--key-bytes 16] [--value-bytes 128] [--keyspace 100000]
                 [--peers etcd,dragonboat|none] [--soak-s N] [--smoke] [--kvr-bin PATH]
       kvr-bench --snapshot-gib N [--out DIR] [--kvr-bin PATH]

Starts a 3-replica kvr cluster on 127.0.0.1 (replica 1 in this process, 2 and 3 as `kvr`
processes; fsync on), measures closed-loop writes and reads at each concurrency through the
Rust API and writes through the C ABI, the raw LMDB and fdatasync references, and the peers
(installed by tests/bench/peers/install.sh). Prints a table; writes DIR/report.json and
DIR/report.txt. Data and logs go to DIR/data (wiped at start).

  --smoke      kvr and references only, concurrency 1,8, 1 s windows (for the test suite)
  --soak-s N   also run 64 writers for N seconds, sampling every replica's RSS
  --snapshot-gib N   only the snapshot benchmark: load N GiB into a 3-replica cluster, add a
               4th replica, and measure the transfer (MB/s), the peak memory of sender and
               receiver, and writes/s before and during it; writes DIR/snapshot.json";

/// Most closed-loop workers per phase.
const CONCURRENCY_MAX: usize = 4096;
/// Most distinct keys.
const KEYSPACE_MAX: usize = 100_000_000;
/// Longest measured window or soak, in seconds.
const SECONDS_MAX: f64 = 86_400.0;
/// kvr's key and value limits (include/kvr.h).
const KEY_BYTES_MAX: usize = kvr::ffi::KVR_KEY_BYTES_MAX;
const VALUE_BYTES_MAX: usize = kvr::ffi::KVR_VALUE_BYTES_MAX;
/// fdatasync iterations of the reference (at least 500, so p99 means something).
const FSYNC_ITERATIONS: usize = 1000;
const FSYNC_ITERATIONS_SMOKE: usize = 500;

#[derive(Debug, Clone)]
pub struct Options {
    pub concurrency: Vec<usize>,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub key_bytes: usize,
    pub value_bytes: usize,
    pub keyspace: usize,
    pub out: PathBuf,
    pub peers: Vec<String>,
    pub smoke: bool,
    pub soak_s: Option<f64>,
    pub kvr_bin: Option<PathBuf>,
    pub fsync_iterations: usize,
    pub snapshot_gib: Option<f64>,
}

impl Options {
    fn defaults(smoke: bool) -> Options {
        Options {
            concurrency: if smoke {
                vec![1, 8]
            } else {
                vec![1, 8, 64, 256]
            },
            duration_s: if smoke { 1.0 } else { 10.0 },
            warmup_s: if smoke { 0.5 } else { 3.0 },
            key_bytes: 16,
            value_bytes: 128,
            keyspace: 100_000,
            out: PathBuf::from("target/bench"),
            peers: if smoke {
                Vec::new()
            } else {
                peers::KNOWN.iter().map(|s| s.to_string()).collect()
            },
            smoke,
            soak_s: None,
            snapshot_gib: None,
            kvr_bin: None,
            fsync_iterations: if smoke {
                FSYNC_ITERATIONS_SMOKE
            } else {
                FSYNC_ITERATIONS
            },
        }
    }
}

/// Parses the arguments (without the program name); `Ok(None)` for --help.
pub fn parse(args: &[String]) -> Result<Option<Options>, String> {
    let mut o = Options::defaults(args.iter().any(|a| a == "--smoke"));
    let mut i = 0;
    while i < args.len() {
        let flag = args[i].as_str();
        match flag {
            "-h" | "--help" => return Ok(None),
            "--smoke" => {
                i += 1;
                continue;
            }
            _ => {}
        }
        let value = args.get(i + 1).ok_or(format!("{flag} needs a value"))?;
        set(&mut o, flag, value)?;
        i += 2;
    }
    validate(&o)?;
    Ok(Some(o))
}

fn set(o: &mut Options, flag: &str, v: &str) -> Result<(), String> {
    match flag {
        "--concurrency" => {
            o.concurrency = v
                .split(',')
                .map(|s| number(flag, s, 1, CONCURRENCY_MAX))
                .collect::<Result<_, _>>()?
        }
        "--duration-s" => o.duration_s = seconds(flag, v)?,
        "--warmup-s" => o.warmup_s = seconds(flag, v)?,
        "--soak-s" => o.soak_s = Some(seconds(flag, v)?),
        "--snapshot-gib" => match v.trim().parse::<f64>() {
            Ok(g) if g > 0.0 && g <= 1024.0 => o.snapshot_gib = Some(g),
            _ => return Err(format!("{flag}: {v:?} is not a size in GiB in (0, 1024]")),
        },
        "--key-bytes" => o.key_bytes = number(flag, v, 1, KEY_BYTES_MAX)?,
        "--value-bytes" => o.value_bytes = number(flag, v, 0, VALUE_BYTES_MAX)?,
        "--keyspace" => o.keyspace = number(flag, v, 1, KEYSPACE_MAX)?,
        "--out" => o.out = PathBuf::from(v),
        "--kvr-bin" => o.kvr_bin = Some(PathBuf::from(v)),
        "--peers" => o.peers = peer_list(v)?,
        _ => return Err(format!("unknown flag {flag:?}")),
    }
    Ok(())
}

fn number(flag: &str, v: &str, min: usize, max: usize) -> Result<usize, String> {
    match v.trim().parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("{flag}: {v:?} is not an integer in [{min}, {max}]")),
    }
}

fn seconds(flag: &str, v: &str) -> Result<f64, String> {
    match v.trim().parse::<f64>() {
        Ok(s) if (0.0..=SECONDS_MAX).contains(&s) => Ok(s),
        _ => Err(format!(
            "{flag}: {v:?} is not a number of seconds in [0, {SECONDS_MAX}]"
        )),
    }
}

fn peer_list(v: &str) -> Result<Vec<String>, String> {
    if v == "none" || v.is_empty() {
        return Ok(Vec::new());
    }
    v.split(',')
        .map(|p| match peers::KNOWN.contains(&p) {
            true => Ok(p.to_string()),
            false => Err(format!(
                "--peers: unknown peer {p:?} (known: {})",
                peers::KNOWN.join(", ")
            )),
        })
        .collect()
}

fn validate(o: &Options) -> Result<(), String> {
    if o.duration_s <= 0.0 {
        return Err("--duration-s must be > 0".into());
    }
    if o.soak_s == Some(0.0) {
        return Err("--soak-s must be > 0".into());
    }
    let digits = (o.keyspace - 1).to_string().len();
    if digits > o.key_bytes {
        return Err(format!(
            "--key-bytes {} is too small for --keyspace {} (keys are {digits} digits)",
            o.key_bytes, o.keyspace
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn smoke_sets_small_defaults_that_flags_override() {
        let o = parse(&args("--smoke --out x")).unwrap().unwrap();
        assert_eq!(o.concurrency, vec![1, 8]);
        assert!(o.peers.is_empty());
        let o = parse(&args("--concurrency 2 --smoke --peers etcd"))
            .unwrap()
            .unwrap();
        assert_eq!(o.concurrency, vec![2]);
        assert_eq!(o.peers, vec!["etcd".to_string()]);
        let o = parse(&[]).unwrap().unwrap();
        assert_eq!(o.concurrency, vec![1, 8, 64, 256]);
        assert_eq!(o.peers.len(), 2);
    }

    #[test]
    fn rejects_bad_values() {
        for bad in [
            "--concurrency 0",
            "--concurrency 1,x",
            "--peers mysql",
            "--key-bytes 3",
            "--duration-s 0",
            "--value-bytes 99999999",
            "--bogus 1",
            "--out",
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad} accepted");
        }
        assert!(parse(&args("--help")).unwrap().is_none());
    }
}
