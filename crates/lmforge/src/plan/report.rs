//! The human-readable `lmforge plan` table (`--json` prints the [`Plan`] itself).

use super::{Plan, Precision};
use std::fmt::Write;

/// 1536 → "1.50 KiB"; decimal bytes alongside would only add noise.
pub fn gib(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.2} {}", units[i])
    }
}

/// 6738415616 → "6,738,415,616".
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// 3.2e5 s → "3.7 days".
fn duration(seconds: f64) -> String {
    match seconds {
        s if s < 120.0 => format!("{s:.0} s"),
        s if s < 7200.0 => format!("{:.1} min", s / 60.0),
        s if s < 172_800.0 => format!("{:.1} h", s / 3600.0),
        s => format!("{:.1} days", s / 86_400.0),
    }
}

/// Whole numbers when large, three significant digits when small.
fn amount(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.3}")
    }
}

pub fn table(p: &Plan) -> String {
    let mut o = String::new();
    let precision = match p.precision {
        Precision::Fp32 => "fp32",
        Precision::Bf16Mixed => "bf16-mixed",
    };
    let pc = &p.parameters_by_component;
    let _ = writeln!(o, "model {}: {} parameters", p.model, thousands(p.parameters));
    for (name, n) in [
        ("embeddings", pc.embeddings),
        ("attention", pc.attention),
        ("mlp", pc.mlp),
        ("norms", pc.norms),
        ("lm head", pc.head),
    ] {
        let _ = writeln!(o, "  {name:<28} {:>17}", thousands(n));
    }
    let _ = writeln!(
        o,
        "\nsetup: {} x {}, ZeRO {}, {precision}, {}, micro-batch {} x {} tokens, grad-accum {}, \
         global batch {} sequences{}",
        p.gpus,
        p.device,
        p.zero,
        p.optimizer,
        p.micro_batch,
        p.seq_len,
        p.grad_accum,
        p.global_batch,
        p.activation_checkpointing.setup_note()
    );
    let m = &p.memory;
    let _ = writeln!(o, "\nmemory per device");
    let rows = [
        ("weights", m.weights),
        ("gradients", m.gradients),
        ("optimizer state", m.optimizer_state),
        ("activations", m.activations),
        ("temporary buffers", m.temporary_buffers),
        ("framework overhead", m.framework_overhead),
    ];
    for (name, b) in rows {
        let _ = writeln!(o, "  {name:<28} {:>12}", gib(b));
    }
    let _ = writeln!(o, "  {:<28} {:>12}", "total", gib(p.memory_per_device_bytes));
    let _ = writeln!(o, "  {:<28} {:>12}", "device memory", gib(p.device_memory_bytes));
    if p.device != "cpu" {
        let _ = writeln!(
            o,
            "  (activations {} without checkpointing, {} with)",
            gib(m.activations_without_checkpointing),
            gib(m.activations_with_checkpointing)
        );
    }
    if p.fits {
        let _ = writeln!(o, "  fits: yes");
        if let Some(s) = &p.fewer_recomputed {
            let _ = writeln!(
                o,
                "  fewer blocks recomputed also fit (less compute a step): {} ({} per device)",
                s.change,
                gib(s.memory_per_device_bytes)
            );
        }
    } else {
        match &p.suggestion {
            Some(s) => {
                let _ = writeln!(
                    o,
                    "  fits: NO — smallest change that fits: {} ({} per device, global batch {})",
                    s.change,
                    gib(s.memory_per_device_bytes),
                    s.global_batch
                );
            }
            None => {
                let _ = writeln!(o, "  fits: NO — no change up to {} GPUs makes it fit", super::MAX_GPUS);
            }
        }
        if let Some(s) = &p.optimizer_suggestion {
            let _ = writeln!(
                o,
                "  or, on these devices, a lighter optimizer: {} ({} per device, global batch {})",
                s.change,
                gib(s.memory_per_device_bytes),
                s.global_batch
            );
        }
    }
    if p.gpus > 1 {
        let _ = writeln!(o, "\ncommunication");
        let _ = writeln!(
            o,
            "  {:<28} {:>12}",
            format!("sent per step ({})", p.compress.name()),
            gib(p.communication_bytes_per_step)
        );
    }
    let _ = writeln!(o, "\ncompute");
    let _ = writeln!(o, "  {:<28} {:>12.3e}", "FLOPs per token", p.flops_per_token);
    let _ = writeln!(o, "  {:<28} {:>12.1} TFLOP/s", "peak per device", p.peak_flops_per_device / 1e12);
    let _ = writeln!(o, "  {:<28} {:>12.2}", "MFU", p.mfu);
    let _ = writeln!(o, "  {:<28} {:>12.0}", "tokens/s (all devices)", p.tokens_per_s);
    let _ = writeln!(o, "  {:<28} {:>12.3e}", "training tokens", p.tokens);
    let _ = writeln!(o, "  {:<28} {:>12}", "time", duration(p.training_seconds));
    let _ = writeln!(
        o,
        "  {:<28} {:>12}",
        if p.device == "cpu" { "device-hours" } else { "GPU-hours" },
        amount(p.gpu_hours)
    );
    if let Some(c) = p.cost {
        let _ = writeln!(o, "  {:<28} {:>12}", "cost", amount(c));
    }
    o
}
