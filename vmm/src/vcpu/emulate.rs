//! Instructions the host's CPL 0 emulator rejects (KVM_EXIT_INTERNAL_ERROR, emulation
//! failure). On PVM hosts ("pagetable-based virtual machine", no hardware virtualisation)
//! guest kernel code is instruction-emulated, and that emulator stops at `int3` and `fwait`,
//! both of which Linux executes unconditionally (the boot-time `int3_selftest`, `text_poke_bp`
//! sites, `fpu__drop` on every task exit). Those two are emulated here exactly as the CPU
//! would execute them; everything else is decoded far enough to be named in the report.

use std::sync::atomic::{AtomicU64, Ordering};

/// KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES in `emulation_failure.flags`.
const FLAG_INSTRUCTION_BYTES: u64 = 1;

/// Emulated instructions, for the whole process (one machine per process).
pub static INT3_EMULATED: AtomicU64 = AtomicU64::new(0);
pub static FWAIT_EMULATED: AtomicU64 = AtomicU64::new(0);

/// The emulation counters as one line for reports.
pub fn counters() -> String {
    format!(
        "emulated int3={} fwait={}",
        INT3_EMULATED.load(Ordering::Relaxed),
        FWAIT_EMULATED.load(Ordering::Relaxed)
    )
}

/// The instruction bytes KVM reported with an emulation failure: `data[0]` holds the flags;
/// when bit 0 is set, byte 0 of `data[1]` is the byte count and the bytes follow it
/// (`struct kvm_run.emulation_failure`: flags, insn_size, insn_bytes[15]).
pub fn reported_bytes(data: &[u64]) -> Option<Vec<u8>> {
    let flags = *data.first()?;
    if flags & FLAG_INSTRUCTION_BYTES == 0 || data.len() < 2 {
        return None;
    }
    let raw: Vec<u8> = data[1..data.len().min(3)]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    let size = usize::from(raw[0]).min(raw.len() - 1).min(15);
    Some(raw[1..1 + size].to_vec())
}

/// What an instruction is, as far as the report and the emulation need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `int3` (0xcc): #BP, trap-like (the saved RIP is past the instruction).
    Int3,
    /// `fwait`/`wait` (0x9b).
    Fwait,
    /// Anything else; the mnemonic when known.
    Other(Option<&'static str>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub kind: Kind,
    /// Instruction length in bytes (prefixes included) where the decoder knows it.
    pub len: Option<usize>,
}

fn is_legacy_prefix(b: u8) -> bool {
    matches!(
        b,
        0x66 | 0x67 | 0xf0 | 0xf2 | 0xf3 | 0x2e | 0x36 | 0x3e | 0x26 | 0x64 | 0x65
    )
}

/// Decode `bytes` (64-bit mode when `long_mode`, where 0x40-0x4f are REX prefixes).
pub fn decode(bytes: &[u8], long_mode: bool) -> Decoded {
    let mut i = 0;
    let mut rep = false; // f3
    let mut opsize = false; // 66
    let mut repne = false; // f2
    while i < bytes.len() && is_legacy_prefix(bytes[i]) {
        match bytes[i] {
            0xf3 => rep = true,
            0xf2 => repne = true,
            0x66 => opsize = true,
            _ => {}
        }
        i += 1;
    }
    let mut rex_w = false;
    if long_mode && i < bytes.len() && (0x40..=0x4f).contains(&bytes[i]) {
        rex_w = bytes[i] & 8 != 0;
        i += 1;
    }
    let other = |name: Option<&'static str>| Decoded {
        kind: Kind::Other(name),
        len: None,
    };
    let Some(&op) = bytes.get(i) else {
        return other(None);
    };
    match op {
        0xcc => Decoded {
            kind: Kind::Int3,
            len: Some(i + 1),
        },
        0x9b => Decoded {
            kind: Kind::Fwait,
            len: Some(i + 1),
        },
        0xf4 => other(Some("hlt")),
        0xcd => other(Some("int")),
        0xcf => other(Some("iret")),
        0xc4 | 0xc5 => other(Some("vex-encoded (avx)")),
        0x62 if long_mode => other(Some("evex-encoded (avx-512)")),
        0xd8..=0xdf => other(Some(x87_name(op, bytes.get(i + 1).copied()))),
        0x0f => {
            let Some(&op2) = bytes.get(i + 1) else {
                return other(None);
            };
            let modrm = bytes.get(i + 2).copied();
            let reg = modrm.map(|m| (m >> 3) & 7);
            let is_reg = modrm.map(|m| m >> 6 == 3);
            let name = match op2 {
                0x01 => match modrm {
                    Some(0xca) => Some("clac"),
                    Some(0xcb) => Some("stac"),
                    Some(0xd0) => Some("xgetbv"),
                    Some(0xd1) => Some("xsetbv"),
                    Some(0xf8) => Some("swapgs"),
                    Some(0xf9) => Some("rdtscp"),
                    _ => Some("system instruction (0f 01)"),
                },
                0x05 => Some("syscall"),
                0x07 => Some("sysret"),
                0x0b => Some("ud2"),
                0x0d => Some("prefetchw"),
                0x18 => Some("prefetch"),
                0x30 => Some("wrmsr"),
                0x31 => Some("rdtsc"),
                0x32 => Some("rdmsr"),
                0x34 => Some("sysenter"),
                0x38 => ssse3_sse4_name(bytes.get(i + 2).copied(), opsize, repne),
                0x3a => match bytes.get(i + 2) {
                    Some(0x44) => Some("pclmulqdq"),
                    Some(0xdf) => Some("aeskeygenassist"),
                    Some(0x0f) => Some("palignr"),
                    _ => Some("sse4 instruction (0f 3a)"),
                },
                0xa2 => Some("cpuid"),
                0xae => match (reg, is_reg) {
                    (Some(0), Some(true)) if rep => Some("rdfsbase"),
                    (Some(1), Some(true)) if rep => Some("rdgsbase"),
                    (Some(2), Some(true)) if rep => Some("wrfsbase"),
                    (Some(3), Some(true)) if rep => Some("wrgsbase"),
                    (Some(5), Some(true)) => Some("lfence"),
                    (Some(6), Some(true)) => Some("mfence"),
                    (Some(7), Some(true)) => Some("sfence"),
                    (Some(0), _) => Some(if rex_w { "fxsave64" } else { "fxsave" }),
                    (Some(1), _) => Some(if rex_w { "fxrstor64" } else { "fxrstor" }),
                    (Some(2), _) => Some("ldmxcsr"),
                    (Some(3), _) => Some("stmxcsr"),
                    (Some(4), _) => Some(if rex_w { "xsave64" } else { "xsave" }),
                    (Some(5), _) => Some(if rex_w { "xrstor64" } else { "xrstor" }),
                    (Some(6), _) if opsize => Some("clwb"),
                    (Some(6), _) => Some(if rex_w { "xsaveopt64" } else { "xsaveopt" }),
                    (Some(7), _) if opsize => Some("clflushopt"),
                    (Some(7), _) => Some("clflush"),
                    _ => None,
                },
                0xb8 if rep => Some("popcnt"),
                0xbc if rep => Some("tzcnt"),
                0xbd if rep => Some("lzcnt"),
                0xc7 => match (reg, is_reg) {
                    (Some(1), Some(false)) => Some(if rex_w { "cmpxchg16b" } else { "cmpxchg8b" }),
                    (Some(3), Some(false)) => Some(if rex_w { "xrstors64" } else { "xrstors" }),
                    (Some(4), Some(false)) => Some(if rex_w { "xsavec64" } else { "xsavec" }),
                    (Some(5), Some(false)) => Some(if rex_w { "xsaves64" } else { "xsaves" }),
                    (Some(6), Some(true)) => Some("rdrand"),
                    (Some(7), Some(true)) if rep => Some("rdpid"),
                    (Some(7), Some(true)) => Some("rdseed"),
                    _ => None,
                },
                _ => None,
            };
            other(name)
        }
        _ => other(None),
    }
}

fn ssse3_sse4_name(op3: Option<u8>, opsize: bool, repne: bool) -> Option<&'static str> {
    Some(match op3? {
        0x00 => "pshufb",
        0xdc => "aesenc",
        0xdd => "aesenclast",
        0xde => "aesdec",
        0xdf => "aesdeclast",
        0xf0 | 0xf1 if repne => "crc32",
        0xf0 | 0xf1 => "movbe",
        _ if opsize => "ssse3/sse4 instruction (66 0f 38)",
        _ => "ssse3 instruction (0f 38)",
    })
}

fn x87_name(op: u8, modrm: Option<u8>) -> &'static str {
    match (op, modrm) {
        (0xdb, Some(0xe2)) => "fnclex",
        (0xdb, Some(0xe3)) => "fninit",
        (0xd9, Some(m)) if m >> 6 != 3 && (m >> 3) & 7 == 5 => "fldcw",
        (0xd9, Some(m)) if m >> 6 != 3 && (m >> 3) & 7 == 7 => "fnstcw",
        (0xdd, Some(m)) if m >> 6 != 3 && (m >> 3) & 7 == 7 => "fnstsw",
        (0xdf, Some(0xe0)) => "fnstsw ax",
        _ => "x87 instruction",
    }
}

/// Format bytes as `0f c7 0e`.
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What `fwait` does given the x87 state: CR0.TS and CR0.MP both set -> #NM; an unmasked
/// x87 exception pending (a status-word exception bit whose control-word mask bit is clear)
/// -> #MF; otherwise nothing (the instruction completes).
pub fn fwait_outcome(cr0: u64, fcw: u16, fsw: u16) -> Option<u8> {
    const CR0_MP: u64 = 1 << 1;
    const CR0_TS: u64 = 1 << 3;
    const NM: u8 = 7;
    const MF: u8 = 16;
    if cr0 & CR0_TS != 0 && cr0 & CR0_MP != 0 {
        return Some(NM);
    }
    if fsw & !fcw & 0x3f != 0 {
        return Some(MF);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(bytes: &[u8]) -> Option<&'static str> {
        match decode(bytes, true).kind {
            Kind::Other(n) => n,
            k => panic!("{k:?}"),
        }
    }

    #[test]
    fn kvm_data_layout() {
        // flags = 1; insn_size = 3; bytes 48 0f c7 ...
        let mut raw = [0u8; 16];
        raw[0] = 4;
        raw[1..5].copy_from_slice(&[0xf0, 0x48, 0x0f, 0xc7]);
        let d1 = u64::from_le_bytes(raw[..8].try_into().unwrap());
        let d2 = u64::from_le_bytes(raw[8..].try_into().unwrap());
        assert_eq!(
            reported_bytes(&[1, d1, d2]),
            Some(vec![0xf0, 0x48, 0x0f, 0xc7])
        );
        // No bytes flag, or no data: nothing.
        assert_eq!(reported_bytes(&[0, d1, d2]), None);
        assert_eq!(reported_bytes(&[]), None);
        // A size beyond the 15 bytes present is clamped.
        raw[0] = 200;
        let d1 = u64::from_le_bytes(raw[..8].try_into().unwrap());
        assert_eq!(reported_bytes(&[1, d1, d2]).unwrap().len(), 15);
    }

    #[test]
    fn int3_and_fwait_lengths() {
        assert_eq!(
            decode(&[0xcc, 0x90, 0x90], true),
            Decoded {
                kind: Kind::Int3,
                len: Some(1)
            }
        );
        assert_eq!(decode(&[0x9b, 0xdb, 0xe2], true).len, Some(1));
        assert_eq!(decode(&[0x9b], true).kind, Kind::Fwait);
        // Prefixes count towards the length.
        assert_eq!(decode(&[0x3e, 0x9b], true).len, Some(2));
        // 0x48 is a REX prefix only in long mode; in 32-bit mode it is `dec eax`.
        assert_eq!(decode(&[0x48, 0xcc], true).len, Some(2));
        assert_eq!(decode(&[0x48, 0xcc], false).kind, Kind::Other(None));
        // `int 3` (cd 03) is not int3 (different #BP semantics under IOPL/V86 rules).
        assert_eq!(decode(&[0xcd, 0x03], true).kind, Kind::Other(Some("int")));
    }

    #[test]
    fn names_of_instructions_pvm_rejects() {
        // lock cmpxchg16b (%rsi) as in SLUB
        assert_eq!(name(&[0xf0, 0x48, 0x0f, 0xc7, 0x0e]), Some("cmpxchg16b"));
        assert_eq!(name(&[0xf0, 0x0f, 0xc7, 0x0e]), Some("cmpxchg8b"));
        // xrstor64 (%rdi) as in restore_fpregs_from_fpstate
        assert_eq!(name(&[0x48, 0x0f, 0xae, 0x2f]), Some("xrstor64"));
        assert_eq!(name(&[0x0f, 0xae, 0x2f]), Some("xrstor"));
        // popcnt %rdi,%rax
        assert_eq!(name(&[0xf3, 0x48, 0x0f, 0xb8, 0xc7]), Some("popcnt"));
        // ldmxcsr (%rdi)
        assert_eq!(name(&[0x0f, 0xae, 0x17]), Some("ldmxcsr"));
        assert_eq!(name(&[0x0f, 0xae, 0xe8]), Some("lfence"));
        assert_eq!(name(&[0x66, 0x0f, 0xae, 0x3f]), Some("clflushopt"));
        assert_eq!(name(&[0x0f, 0xc7, 0xf0]), Some("rdrand"));
        assert_eq!(name(&[0x0f, 0xc7, 0xf8]), Some("rdseed"));
        assert_eq!(name(&[0xf3, 0x0f, 0xc7, 0xf8]), Some("rdpid"));
        assert_eq!(name(&[0xf3, 0x48, 0x0f, 0xae, 0xc0]), Some("rdfsbase"));
        assert_eq!(name(&[0x66, 0x0f, 0x38, 0x00, 0xc1]), Some("pshufb"));
        assert_eq!(
            name(&[0x66, 0x0f, 0x3a, 0x44, 0xc1, 0x00]),
            Some("pclmulqdq")
        );
        assert_eq!(name(&[0x0f, 0x01, 0xcb]), Some("stac"));
        assert_eq!(name(&[0xdb, 0xe2]), Some("fnclex"));
        assert_eq!(name(&[0xc5, 0xf8, 0x77]), Some("vex-encoded (avx)"));
        assert_eq!(name(&[0x90]), None);
        assert_eq!(name(&[]), None);
        assert_eq!(hex(&[0xf0, 0x48, 0x0f]), "f0 48 0f");
    }

    #[test]
    fn fwait_follows_the_x87_rules() {
        let ne_mp = (1 << 5) | (1 << 1);
        // Default control word 0x37f masks everything: a pending #IE does not fault.
        assert_eq!(fwait_outcome(ne_mp, 0x37f, 0x0001), None);
        // Unmask #IE (bit 0) with #IE pending: #MF.
        assert_eq!(fwait_outcome(ne_mp, 0x37e, 0x0081), Some(16));
        // Unmasked but nothing pending: completes.
        assert_eq!(fwait_outcome(ne_mp, 0x0000, 0x0000), None);
        // TS with MP: #NM before anything else.
        assert_eq!(fwait_outcome(ne_mp | (1 << 3), 0x37e, 0x0081), Some(7));
        // TS without MP: wait does not fault on TS.
        assert_eq!(fwait_outcome(1 << 3, 0x37f, 0), None);
    }
}
