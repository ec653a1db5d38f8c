//! What machina's fw_cfg device (devices::legacy::fw_cfg) holds, from the plan and the
//! configuration: QEMU's x86 items (signature, ID, UUID, RAM size, CPU counts, NUMA, boot
//! menu), `etc/e820` from the plan's memory map, `etc/boot-fail-wait`, `etc/boot-menu-wait`,
//! the command line items when a kernel is given, and the guest-writable `etc/vmcoreinfo` of
//! a `vmcoreinfo` device. ACPI tables are written by machina
//! itself, so `etc/acpi/tables` and `etc/table-loader` are absent.

use crate::memory::GuestMemory;
use devices::legacy::fw_cfg::{self as fw, FwCfg, FwCfgError};
use machine::Plan;

/// Inputs besides the plan (from the command line or QMP's configuration).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FwCfgInputs {
    /// `-uuid`; zero when absent, as in QEMU.
    pub uuid: Option<[u8; 16]>,
    pub nographic: bool,
    /// `-boot menu=on`.
    pub boot_menu: bool,
    /// `-boot reboot-timeout=` in ms; -1 (QEMU's default) means never.
    pub reboot_timeout: Option<i64>,
    /// `-boot splash-time=` in ms, when given.
    pub splash_time: Option<u16>,
    /// `-append` when a kernel is given.
    pub cmdline: Option<String>,
}

impl FwCfgInputs {
    pub fn from_config(config: &crate::config::MachineConfig) -> Self {
        Self {
            uuid: config.uuid,
            // -nographic is not part of the machine configuration: machina has no display.
            nographic: false,
            boot_menu: config.boot.menu.unwrap_or(false),
            reboot_timeout: config.boot.reboot_timeout,
            // QEMU refuses values outside 0..=0xffff on the command line.
            splash_time: config
                .boot
                .splash_time
                .map(|ms| ms.clamp(0, i64::from(u16::MAX)) as u16),
            cmdline: config.kernel.as_ref().map(|_| config.append.clone()),
        }
    }
}

/// The `vmcoreinfo` device's file: a guest kernel writes where its VMCOREINFO ELF note
/// is, for a dump taken from outside (hw/misc/vmcoreinfo.c).
pub const VMCOREINFO_FILE: &str = "etc/vmcoreinfo";

/// FWCfgVMCoreInfo at reset: host_format ELF (1), guest_format none, size and paddr 0
/// (u16, u16, u32, u64, little-endian).
fn vmcoreinfo_reset_state() -> Vec<u8> {
    let mut v = 1u16.to_le_bytes().to_vec();
    v.extend([0u8; 14]);
    v
}

/// QEMU's etc/e820 entry: address, length (u64) and type (u32), little-endian, packed.
fn e820_file(plan: &Plan) -> Vec<u8> {
    let mut out = Vec::new();
    for (addr, len, kind) in crate::boot::e820_entries(&plan.memory) {
        out.extend_from_slice(&addr.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&kind.to_le_bytes());
    }
    out
}

/// The device for `plan`, with DMA into `memory`.
pub fn for_plan(
    plan: &Plan,
    memory: &GuestMemory,
    inputs: &FwCfgInputs,
) -> Result<FwCfg, FwCfgError> {
    let mut cfg = FwCfg::new(Some(memory.clone()));
    cfg.add(fw::FW_CFG_UUID, inputs.uuid.unwrap_or_default().to_vec());
    cfg.add_u64(fw::FW_CFG_RAM_SIZE, plan.memory.ram_size);
    cfg.add_u16(fw::FW_CFG_NOGRAPHIC, u16::from(inputs.nographic));
    cfg.add_u16(
        fw::FW_CFG_NB_CPUS,
        plan.cpus.min(u32::from(u16::MAX)) as u16,
    );
    let max_cpus = plan.max_cpus.max(plan.cpus);
    cfg.add_u16(
        fw::FW_CFG_MAX_CPUS,
        max_cpus.min(u32::from(u16::MAX)) as u16,
    );
    cfg.add(fw::FW_CFG_NUMA, numa_item(plan, max_cpus));
    cfg.add_u16(fw::FW_CFG_BOOT_MENU, u16::from(inputs.boot_menu));
    if let Some(cmdline) = &inputs.cmdline {
        let mut data = cmdline.as_bytes().to_vec();
        data.push(0);
        cfg.add_u32(fw::FW_CFG_CMDLINE_SIZE, data.len() as u32);
        cfg.add(fw::FW_CFG_CMDLINE_DATA, data);
    }
    cfg.add_file("etc/e820", e820_file(plan))?;
    let timeout = inputs.reboot_timeout.unwrap_or(-1);
    // QEMU stores -1 (never) as all ones.
    cfg.add_file(
        "etc/boot-fail-wait",
        (timeout as u32).to_le_bytes().to_vec(),
    )?;
    if let Some(ms) = inputs.splash_time {
        cfg.add_file("etc/boot-menu-wait", ms.to_le_bytes().to_vec())?;
    }
    if plan.busless.iter().any(|d| d.type_name == "vmcoreinfo") {
        cfg.add_writable_file(VMCOREINFO_FILE, vmcoreinfo_reset_state())?;
    }
    Ok(cfg)
}

/// QEMU's NUMA item (fw_cfg_arch_create): 64-bit words: the node count, each APIC id's node
/// (up to the highest possible APIC id), then each node's RAM.
fn numa_item(plan: &machine::Plan, max_cpus: u32) -> Vec<u8> {
    let apic_limit = plan.topology.apic_id(max_cpus.saturating_sub(1)) as usize + 1;
    let numa = &plan.numa;
    let mut words = vec![0u64; 1 + apic_limit + numa.nodes.len()];
    words[0] = numa.nodes.len() as u64;
    if numa.is_enabled() {
        for cpu in 0..max_cpus {
            let apic = plan.topology.apic_id(cpu) as usize;
            words[apic + 1] = u64::from(numa.node_of(cpu).unwrap_or(0));
        }
        for (i, node) in numa.nodes.iter().enumerate() {
            words[apic_limit + 1 + i] = node.mem;
        }
    }
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::bus::BusDevice;
    use vm_memory::GuestAddress;

    /// The item under `key` as a guest reads it (selector at offset 0, data at 1; the base
    /// is not used by the device).
    fn item(cfg: &mut FwCfg, key: u16, len: usize) -> Vec<u8> {
        cfg.write(0x510, 0, &key.to_le_bytes());
        (0..len)
            .map(|_| {
                let mut b = [0u8];
                cfg.read(0x510, 1, &mut b);
                b[0]
            })
            .collect()
    }

    #[test]
    fn items_follow_the_plan() {
        let catalog = machine::Catalog::builtin();
        let plan = catalog
            .plan(&machine::PlanRequest {
                machine: Some("q35".into()),
                ram_size: 256 << 20,
                cpus: 2,
                ..Default::default()
            })
            .unwrap();
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let inputs = FwCfgInputs {
            uuid: Some([7; 16]),
            reboot_timeout: Some(15),
            ..Default::default()
        };
        let mut cfg = for_plan(&plan, &mem, &inputs).unwrap();
        assert_eq!(item(&mut cfg, fw::FW_CFG_SIGNATURE, 4), b"QEMU");
        assert_eq!(item(&mut cfg, fw::FW_CFG_UUID, 16), [7; 16]);
        assert_eq!(
            item(&mut cfg, fw::FW_CFG_RAM_SIZE, 8),
            (256u64 << 20).to_le_bytes()
        );
        assert_eq!(item(&mut cfg, fw::FW_CFG_NB_CPUS, 2), 2u16.to_le_bytes());
        let e820 = cfg.item(0x20).unwrap().to_vec();
        assert_eq!(e820.len() % 20, 0);
        // The first entry is RAM at 0.
        assert_eq!(e820[..8], 0u64.to_le_bytes());
        assert_eq!(e820[16..20], 1u32.to_le_bytes());
        assert_eq!(cfg.item(0x21).unwrap(), 15u32.to_le_bytes());
    }

    #[test]
    fn the_numa_item_maps_apic_ids_to_nodes_and_gives_each_nodes_ram() {
        let node = |cpus: Vec<u32>, mem: Option<u64>| machine::NumaArg {
            text: None,
            option: machine::NumaOption::Node {
                nodeid: None,
                cpus,
                mem: None,
                memdev: mem.map(|_| "m".into()),
                memdev_size: mem,
                initiator: None,
            },
        };
        // 3 cores: APIC ids 0, 1, 2 (limit 3); CPU 1 on node 1.
        let plan = machine::Catalog::builtin()
            .plan(&machine::PlanRequest {
                machine: Some("q35".into()),
                cpus: 3,
                numa: vec![node(vec![0, 2], Some(128 << 20)), node(vec![1], None)],
                ..Default::default()
            })
            .unwrap();
        let words: Vec<u64> = numa_item(&plan, 3)
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(words, [2, 0, 1, 0, 128 << 20, 0]);
        // Without NUMA: the count and the per-APIC-id words, all zero.
        let plan = machine::Catalog::builtin()
            .plan(&machine::PlanRequest::new("q35"))
            .unwrap();
        assert_eq!(numa_item(&plan, 1), vec![0u8; 16]);
    }
}
