//! A run config (TOML), optionally followed by a line `%%` and `--set` overrides, one a line.
//! Whatever resolves must also be sizeable: spec, memory estimate, FLOPs, the fit check.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lmforge::train::RunConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (file, sets) = text.split_once("\n%%\n").unwrap_or((text, ""));
    let sets: Vec<String> = sets.lines().map(str::to_string).collect();
    let Ok(cfg) = RunConfig::from_toml_str(file, &sets) else { return };
    let spec = lmforge::models::ModelSpec::from_config(&cfg.model).expect("a resolved config has a valid model");
    let optim = lmforge::optim::OptimSpec::from_config(&cfg.optim).expect("a resolved config has a valid optimizer");
    let seq = if cfg.train.seq_len == 0 { spec.context } else { cfg.train.seq_len };
    let _ = lmforge::train::check_fits(&spec, cfg.train.batch_size, seq, "fuzz", &optim, cfg.train.activation_checkpointing);
    let _ = spec.train_flops_per_token(seq);
    let _ = lmforge::faults::FaultPolicy::from_config(&cfg).expect("validated");
    // What a run writes as config.toml must read back to the same config.
    let back = RunConfig::from_toml_str(&cfg.to_toml(), &[]).expect("a written config reads back");
    assert_eq!(back.hash(), cfg.hash());
});
