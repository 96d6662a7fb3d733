//! A sweep's search space: one distribution per run-config key (`choice`, `uniform`,
//! `loguniform`, `int`, `quniform`), parsed from the `[space]` table with errors naming the
//! key, plus the two model-free samplers: the grid (every combination, in a fixed order) and
//! seeded random draws. Log-scaled parameters are sampled uniformly in log space.

use lmforge::error::{Error, Result};
use rand::Rng;
use serde_json::Value;

/// One parameter's distribution.
#[derive(Debug, Clone, PartialEq)]
pub enum Dist {
    /// One of these values (numbers, strings, booleans).
    Choice(Vec<Value>),
    /// A float in [lo, hi], uniform (or uniform in log space with `log`).
    Float { lo: f64, hi: f64, log: bool },
    /// An integer in [lo, hi] (inclusive), uniform (or in log space).
    Int { lo: i64, hi: i64, log: bool },
    /// round((x − lo) / q) · q + lo for x uniform in [lo, hi].
    Quantized { lo: f64, hi: f64, q: f64 },
}

/// A config key and its distribution; `points` spreads a float range over a grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    pub key: String,
    pub dist: Dist,
    pub points: Option<usize>,
}

/// Where a sampled value sits in the sampler's working space: a float (log-transformed for
/// log scales) in `[lo, hi]`, or the index of a choice.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Internal {
    Real(f64),
    Index(usize),
}

impl Param {
    /// Parses `KEY = { loguniform = [1e-4, 1e-2] }` (and `uniform`, `int`, `quniform`,
    /// `choice`, with optional `log = true` for int, `points = N` for a grid over a float range).
    pub fn parse(key: &str, spec: &toml::Value) -> Result<Self> {
        let at = format!("space.\"{key}\"");
        let table = spec.as_table().ok_or_else(|| {
            Error::config(
                &at,
                "expected a table like { loguniform = [1e-4, 1e-2] }, { int = [2, 8] } or { choice = [...] }",
            )
        })?;
        let kinds = ["choice", "uniform", "loguniform", "int", "quniform"];
        let present: Vec<&str> = kinds.iter().copied().filter(|k| table.contains_key(*k)).collect();
        let [kind] = present[..] else {
            return Err(Error::config(&at, format!("give exactly one of {}", kinds.join(", "))));
        };
        for k in table.keys() {
            if !kinds.contains(&k.as_str()) && k != "log" && k != "points" {
                return Err(Error::config(
                    format!("{at}.{k}"),
                    "unknown; expected one of the kinds, `log` or `points`",
                ));
            }
        }
        let numbers = |n: usize| -> Result<Vec<f64>> {
            let arr =
                table[kind].as_array().ok_or_else(|| Error::config(format!("{at}.{kind}"), "expected an array"))?;
            let v: Option<Vec<f64>> =
                arr.iter().map(|x| x.as_float().or_else(|| x.as_integer().map(|i| i as f64))).collect();
            match v {
                Some(v) if v.len() == n && v.iter().all(|x| x.is_finite()) => Ok(v),
                _ => Err(Error::config(format!("{at}.{kind}"), format!("expected {n} numbers"))),
            }
        };
        let log = match table.get("log") {
            None => false,
            Some(v) => v.as_bool().ok_or_else(|| Error::config(format!("{at}.log"), "expected true or false"))?,
        };
        let points = match table.get("points") {
            None => None,
            Some(v) => Some(
                v.as_integer()
                    .filter(|n| *n >= 2)
                    .ok_or_else(|| Error::config(format!("{at}.points"), "expected an integer >= 2"))?
                    as usize,
            ),
        };
        let range_err = |msg: &str| Error::config(format!("{at}.{kind}"), msg.to_string());
        let dist = match kind {
            "choice" => {
                let arr = table[kind]
                    .as_array()
                    .filter(|a| !a.is_empty())
                    .ok_or_else(|| range_err("expected a non-empty array"))?;
                let values: Option<Vec<Value>> = arr.iter().map(toml_to_json).collect();
                Dist::Choice(values.ok_or_else(|| range_err("choices must be numbers, strings or booleans"))?)
            }
            "uniform" | "loguniform" => {
                let v = numbers(2)?;
                let log = kind == "loguniform";
                if v[0] >= v[1] || (log && v[0] <= 0.0) {
                    return Err(range_err(if log {
                        "expected [lo, hi] with 0 < lo < hi"
                    } else {
                        "expected [lo, hi] with lo < hi"
                    }));
                }
                Dist::Float { lo: v[0], hi: v[1], log }
            }
            "int" => {
                let v = numbers(2)?;
                if v[0].fract() != 0.0 || v[1].fract() != 0.0 || v[0] > v[1] || (log && v[0] < 1.0) {
                    return Err(range_err("expected integers [lo, hi] with lo <= hi (lo >= 1 with log)"));
                }
                Dist::Int { lo: v[0] as i64, hi: v[1] as i64, log }
            }
            _ => {
                let v = numbers(3)?;
                if v[0] >= v[1] || v[2] <= 0.0 {
                    return Err(range_err("expected [lo, hi, q] with lo < hi and q > 0"));
                }
                Dist::Quantized { lo: v[0], hi: v[1], q: v[2] }
            }
        };
        if log && !matches!(dist, Dist::Int { .. }) {
            return Err(Error::config(format!("{at}.log"), "only `int` takes `log` (use loguniform for floats)"));
        }
        if points.is_some() && !matches!(dist, Dist::Float { .. }) {
            return Err(Error::config(format!("{at}.points"), "only uniform / loguniform take `points`"));
        }
        Ok(Self { key: key.to_string(), dist, points })
    }

    /// The sampler's working range: (lo, hi, log) for numbers, None for choices.
    pub fn real_range(&self) -> Option<(f64, f64)> {
        match self.dist {
            Dist::Choice(_) => None,
            Dist::Float { lo, hi, log } => Some(if log { (lo.ln(), hi.ln()) } else { (lo, hi) }),
            // Integers widen by half a step each side so the end values are as likely as the rest.
            Dist::Int { lo, hi, log } => {
                let (a, b) = (lo as f64 - 0.5, hi as f64 + 0.5);
                Some(if log { ((lo as f64 - 0.5).max(0.5).ln(), b.ln()) } else { (a, b) })
            }
            Dist::Quantized { lo, hi, q } => Some((lo - q / 2.0, hi + q / 2.0)),
        }
    }

    /// Sampled in log space (a report draws it on a log axis).
    pub fn is_log(&self) -> bool {
        matches!(self.dist, Dist::Float { log: true, .. } | Dist::Int { log: true, .. })
    }

    pub fn choices(&self) -> usize {
        match &self.dist {
            Dist::Choice(c) => c.len(),
            _ => 0,
        }
    }

    /// Draws uniformly (in log space for log scales).
    pub fn sample(&self, rng: &mut impl Rng) -> Internal {
        match self.real_range() {
            Some((a, b)) => Internal::Real(rng.random_range(a..b)),
            None => Internal::Index(rng.random_range(0..self.choices())),
        }
    }

    /// The config value for a point of the working space (clamped into the range).
    pub fn value(&self, x: Internal) -> Value {
        match (&self.dist, x) {
            (Dist::Choice(c), Internal::Index(i)) => c[i.min(c.len() - 1)].clone(),
            (Dist::Float { lo, hi, log }, Internal::Real(x)) => {
                let v = if *log { x.exp() } else { x };
                json_f64(v.clamp(*lo, *hi))
            }
            (Dist::Int { lo, hi, log }, Internal::Real(x)) => {
                let v = if *log { x.exp() } else { x };
                Value::from((v.round() as i64).clamp(*lo, *hi))
            }
            (Dist::Quantized { lo, hi, q }, Internal::Real(x)) => {
                let steps = ((x - lo) / q).round().clamp(0.0, ((hi - lo) / q + 1e-9).floor());
                // Rounded to 12 significant digits: 0.1 + 2 × 0.05 reads as 0.2, not 0.20000000000000004.
                json_f64(format!("{:.12e}", lo + steps * q).parse().unwrap_or(lo + steps * q))
            }
            (_, x) => panic!("{x:?} does not fit {:?}", self.dist),
        }
    }

    /// The working-space point of a value recorded for this parameter (for TPE's history).
    pub fn internal(&self, v: &Value) -> Option<Internal> {
        match &self.dist {
            Dist::Choice(c) => c.iter().position(|x| x == v).map(Internal::Index),
            Dist::Float { log: true, .. } | Dist::Int { log: true, .. } => {
                v.as_f64().filter(|x| *x > 0.0).map(|x| Internal::Real(x.ln()))
            }
            _ => v.as_f64().map(Internal::Real),
        }
    }

    /// The grid values of this parameter, or an error for a float range without `points`.
    pub fn grid(&self) -> Result<Vec<Value>> {
        let at = format!("space.\"{}\"", self.key);
        Ok(match &self.dist {
            Dist::Choice(c) => c.clone(),
            Dist::Int { lo, hi, .. } => {
                if hi - lo >= 10_000 {
                    return Err(Error::config(at, "an int range of 10,000+ values is too large for a grid"));
                }
                (*lo..=*hi).map(Value::from).collect()
            }
            Dist::Quantized { lo, hi, q } => {
                let n = ((hi - lo) / q + 1e-9).floor() as usize;
                if n >= 10_000 {
                    return Err(Error::config(at, "a quniform range of 10,000+ values is too large for a grid"));
                }
                (0..=n).map(|k| self.value(Internal::Real(lo + k as f64 * q))).collect()
            }
            Dist::Float { lo, hi, log } => {
                let n = self.points.ok_or_else(|| {
                    Error::config(&at, "a grid needs discrete values: add `points = N` or use choice / int / quniform")
                })?;
                (0..n)
                    .map(|k| {
                        let t = k as f64 / (n - 1) as f64;
                        let v = if *log { (lo.ln() + t * (hi.ln() - lo.ln())).exp() } else { lo + t * (hi - lo) };
                        json_f64(v.clamp(*lo, *hi))
                    })
                    .collect()
            }
        })
    }
}

/// The grid's size and its `index`-th point (mixed radix: the first key changes slowest).
pub fn grid_point(grids: &[Vec<Value>], mut index: usize) -> Vec<Value> {
    let mut out = vec![Value::Null; grids.len()];
    for (i, g) in grids.iter().enumerate().rev() {
        out[i] = g[index % g.len()].clone();
        index /= g.len();
    }
    out
}

fn json_f64(v: f64) -> Value {
    serde_json::Number::from_f64(v).map(Value::Number).unwrap_or(Value::Null)
}

fn toml_to_json(v: &toml::Value) -> Option<Value> {
    Some(match v {
        toml::Value::String(s) => Value::from(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => json_f64(*f),
        toml::Value::Boolean(b) => Value::from(*b),
        _ => return None,
    })
}

/// A sampled value as a `--set` override's right-hand side (TOML syntax).
pub fn toml_literal(v: &Value) -> String {
    match v {
        Value::String(s) => toml::Value::String(s.clone()).to_string(),
        Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
        Value::Number(n) => toml::Value::Float(n.as_f64().unwrap_or(0.0)).to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn param(key: &str, spec: &str) -> Result<Param> {
        let t: toml::Table = format!("v = {spec}").parse().unwrap();
        Param::parse(key, &t["v"])
    }

    #[test]
    fn bad_specs_name_the_key_and_what_is_expected() {
        let e = param("optim.lr", "{ loguniform = [0.0, 1e-2] }").unwrap_err().to_string();
        assert!(e.contains("space.\"optim.lr\".loguniform") && e.contains("0 < lo"), "{e}");
        let e = param("optim.lr", "{ uniform = [1, 2], choice = [1] }").unwrap_err().to_string();
        assert!(e.contains("exactly one"), "{e}");
        let e = param("x", "{ int = [1.5, 3] }").unwrap_err().to_string();
        assert!(e.contains("integers"), "{e}");
        let e = param("x", "{ uniform = [0, 1], step = 2 }").unwrap_err().to_string();
        assert!(e.contains("space.\"x\".step"), "{e}");
        let e = param("x", "3").unwrap_err().to_string();
        assert!(e.contains("expected a table"), "{e}");
        let e = param("x", "{ uniform = [0, 1] }").unwrap().grid().unwrap_err().to_string();
        assert!(e.contains("points"), "{e}");
    }

    /// Every draw lies within its bounds; log scales put half the draws below the geometric
    /// midpoint (a linear draw would put ~1% below it for [1e-4, 1e-2]).
    #[test]
    fn random_draws_respect_bounds_and_log_scale() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let lr = param("optim.lr", "{ loguniform = [1e-4, 1e-2] }").unwrap();
        let layers = param("model.n_layer", "{ int = [2, 6] }").unwrap();
        let wide = param("train.batch_size", "{ int = [1, 1024], log = true }").unwrap();
        let drop = param("model.dropout", "{ quniform = [0.0, 0.3, 0.1] }").unwrap();
        let (mut below, mut seen_ints, mut small_batches) = (0, std::collections::BTreeSet::new(), 0);
        let n = 2000;
        for _ in 0..n {
            let v = lr.value(lr.sample(&mut rng)).as_f64().unwrap();
            assert!((1e-4..=1e-2).contains(&v));
            below += (v < 1e-3) as usize;
            let l = layers.value(layers.sample(&mut rng)).as_i64().unwrap();
            assert!((2..=6).contains(&l));
            seen_ints.insert(l);
            let b = wide.value(wide.sample(&mut rng)).as_i64().unwrap();
            assert!((1..=1024).contains(&b));
            small_batches += (b <= 32) as usize;
            let d = drop.value(drop.sample(&mut rng)).as_f64().unwrap();
            assert!([0.0, 0.1, 0.2, 0.3].contains(&d), "{d}");
        }
        let frac = below as f64 / n as f64;
        assert!((0.45..0.55).contains(&frac), "log-uniform: {frac} below the geometric midpoint");
        assert_eq!(seen_ints.len(), 5, "every integer is drawn");
        assert!(small_batches as f64 / n as f64 > 0.4, "log-scaled ints favour small values");
    }

    #[test]
    fn grids_enumerate_every_combination_once() {
        let lr = param("optim.lr", "{ loguniform = [1e-4, 1e-2], points = 3 }").unwrap();
        let g = lr.grid().unwrap();
        let f: Vec<f64> = g.iter().map(|v| v.as_f64().unwrap()).collect();
        assert!((f[0] - 1e-4).abs() < 1e-12 && (f[1] - 1e-3).abs() < 1e-12 && (f[2] - 1e-2).abs() < 1e-12, "{f:?}");
        let q = param("d", "{ quniform = [0.1, 0.3, 0.05] }").unwrap().grid().unwrap();
        assert_eq!(q, vec![json_f64(0.1), json_f64(0.15), json_f64(0.2), json_f64(0.25), json_f64(0.3)]);
        let c = param("o", "{ choice = [\"adamw\", \"lion\"] }").unwrap().grid().unwrap();
        let grids = vec![g, c];
        let points: std::collections::BTreeSet<String> =
            (0..6).map(|i| serde_json::to_string(&grid_point(&grids, i)).unwrap()).collect();
        assert_eq!(points.len(), 6);
        assert_eq!(grid_point(&grids, 1)[1], Value::from("lion"), "the last key changes fastest");
    }

    #[test]
    fn values_become_toml_literals() {
        assert_eq!(toml_literal(&Value::from("adamw")), "\"adamw\"");
        assert_eq!(toml_literal(&Value::from(4)), "4");
        assert_eq!(toml_literal(&json_f64(0.001)), "0.001");
        assert_eq!(toml_literal(&json_f64(2.0)), "2.0");
        assert_eq!(toml_literal(&Value::from(true)), "true");
    }
}
