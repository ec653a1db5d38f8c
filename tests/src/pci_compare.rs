//! Compare a machine plan (`x-query-machine-definition`, `machine-build`) with what the built
//! machine shows in `query-pci`: every function, at the same bus number (through the bridges'
//! secondary bus numbers), slot and function, with the same IDs, class and qdev id.

use serde_json::Value;
use std::collections::BTreeMap;

/// (bus number, slot, function)
pub type Bdf = (u64, u64, u64);

/// Every function of a query-pci `devices` list keyed by (bus number, slot, function), plus
/// the bus number each bridge (by qdev id) gave its secondary bus.
pub fn flatten(
    devices: &Value,
    out: &mut BTreeMap<Bdf, Value>,
    buses: &mut BTreeMap<String, u64>,
) -> Result<(), String> {
    for d in devices.as_array().into_iter().flatten() {
        let field = |k: &str| {
            d[k].as_u64()
                .ok_or_else(|| format!("query-pci device without '{k}': {d}"))
        };
        let key = (field("bus")?, field("slot")?, field("function")?);
        if let Some(bridge) = d.get("pci_bridge") {
            let secondary = bridge["bus"]["secondary"]
                .as_u64()
                .ok_or_else(|| format!("bridge without a secondary bus: {d}"))?;
            buses.insert(d["qdev_id"].as_str().unwrap_or("").to_string(), secondary);
            flatten(&bridge["devices"], out, buses)?;
        }
        if out.insert(key, d.clone()).is_some() {
            return Err(format!("query-pci lists {key:?} twice"));
        }
    }
    Ok(())
}

/// The functions of `plan` (an `x-query-machine-definition` answer) keyed by where query-pci
/// must show them, given the bus numbers the bridges got (`buses`, by bridge id).
fn plan_bdf(f: &Value, buses: &BTreeMap<String, u64>) -> Result<Bdf, String> {
    let bus = f["bus"]
        .as_str()
        .ok_or_else(|| format!("plan function without a bus: {f}"))?;
    let number = buses.get(bus).copied().ok_or_else(|| {
        format!(
            "bus '{bus}' of {} has no number in query-pci",
            f["type_name"]
        )
    })?;
    Ok((
        number,
        f["slot"].as_u64().unwrap_or(u64::MAX),
        f["function"].as_u64().unwrap_or(u64::MAX),
    ))
}

/// Check that `pci` (the `query-pci` return) shows exactly the functions of `plan`: same
/// count, and for each planned function the same bus number, slot, function, vendor,
/// device, class, subsystem (and subsystem vendor) and qdev id. The first difference is
/// returned as the error.
pub fn compare_plan_with_pci(plan: &Value, pci: &Value) -> Result<(), String> {
    let mut found = BTreeMap::new();
    let mut buses = BTreeMap::new();
    flatten(&pci[0]["devices"], &mut found, &mut buses)?;
    let root = plan["buses"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["is_root"] == true))
        .and_then(|b| b["id"].as_str())
        .ok_or("the plan has no root bus")?;
    buses.insert(root.to_string(), 0);
    let functions = plan["pci"].as_array().ok_or("the plan has no pci list")?;
    if found.len() != functions.len() {
        let planned: Vec<String> = functions
            .iter()
            .map(|f| {
                format!(
                    "{}@{}:{}.{}",
                    f["type_name"], f["bus"], f["slot"], f["function"]
                )
            })
            .collect();
        return Err(format!(
            "query-pci shows {} functions, the plan has {}: planned {planned:?}, found {:?}",
            found.len(),
            functions.len(),
            found.keys().collect::<Vec<_>>()
        ));
    }
    for f in functions {
        let key = plan_bdf(f, &buses)?;
        let dev = found
            .get(&key)
            .ok_or_else(|| format!("{} predicted at {key:?} is missing", f["type_name"]))?;
        let id = &f["identity"];
        let check = |what: &str, got: Option<u64>, want: Option<u64>| {
            if got == want {
                Ok(())
            } else {
                Err(format!(
                    "{} at {key:?}: {what} is {got:?} in query-pci, {want:?} in the plan",
                    f["type_name"]
                ))
            }
        };
        check(
            "vendor",
            dev["id"]["vendor"].as_u64(),
            id["vendor_id"].as_u64(),
        )?;
        check(
            "device",
            dev["id"]["device"].as_u64(),
            id["device_id"].as_u64(),
        )?;
        check(
            "class",
            dev["class_info"]["class"].as_u64(),
            id["class_code"].as_u64().map(|c| c >> 8),
        )?;
        // Bridges have no subsystem IDs in their header (query-pci reports 0).
        let is_bridge = dev.get("pci_bridge").is_some();
        if !is_bridge {
            check(
                "subsystem",
                dev["id"]["subsystem"].as_u64(),
                id["subsystem_id"].as_u64(),
            )?;
            check(
                "subsystem vendor",
                dev["id"]["subsystem-vendor"].as_u64(),
                id["subsystem_vendor_id"].as_u64(),
            )?;
        }
        let want_id = f["id"].as_str().unwrap_or("");
        if dev["qdev_id"].as_str() != Some(want_id) {
            return Err(format!(
                "{} at {key:?}: qdev_id {} in query-pci, '{want_id}' in the plan",
                f["type_name"], dev["qdev_id"]
            ));
        }
        if let Some(child) = f["provides_bus"].as_str() {
            if !is_bridge {
                return Err(format!(
                    "{} at {key:?} provides bus '{child}' but query-pci shows no bridge",
                    f["type_name"]
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plan() -> Value {
        json!({
            "buses": [{"id": "pcie.0", "is_root": true}, {"id": "rp1", "is_root": false}],
            "pci": [
                {"type_name": "mch", "bus": "pcie.0", "slot": 0, "function": 0, "id": null,
                 "identity": {"vendor_id": 0x8086, "device_id": 0x29c0, "class_code": 0x060000,
                              "subsystem_id": 0x1100, "subsystem_vendor_id": 0x1af4}},
                {"type_name": "pcie-root-port", "bus": "pcie.0", "slot": 2, "function": 0,
                 "id": "rp1", "provides_bus": "rp1",
                 "identity": {"vendor_id": 0x1b36, "device_id": 0x000c, "class_code": 0x060400}},
                {"type_name": "virtio-rng-pci", "bus": "rp1", "slot": 0, "function": 0,
                 "id": "rng", "identity": {"vendor_id": 0x1af4, "device_id": 0x1044,
                 "class_code": 0x00ff00, "subsystem_id": 0x1100, "subsystem_vendor_id": 0x1af4}},
            ]
        })
    }

    fn pci(rng_slot: u64) -> Value {
        json!([{"bus": 0, "devices": [
            {"bus": 0, "slot": 0, "function": 0, "qdev_id": "",
             "class_info": {"class": 0x0600},
             "id": {"vendor": 0x8086, "device": 0x29c0, "subsystem": 0x1100, "subsystem-vendor": 0x1af4}},
            {"bus": 0, "slot": 2, "function": 0, "qdev_id": "rp1",
             "class_info": {"class": 0x0604},
             "id": {"vendor": 0x1b36, "device": 0x000c, "subsystem": 0, "subsystem-vendor": 0},
             "pci_bridge": {"bus": {"secondary": 1}, "devices": [
                {"bus": 1, "slot": rng_slot, "function": 0, "qdev_id": "rng",
                 "class_info": {"class": 0x00ff},
                 "id": {"vendor": 0x1af4, "device": 0x1044, "subsystem": 0x1100, "subsystem-vendor": 0x1af4}}
             ]}}
        ]}])
    }

    #[test]
    fn equal_and_different() {
        assert_eq!(compare_plan_with_pci(&plan(), &pci(0)), Ok(()));
        let err = compare_plan_with_pci(&plan(), &pci(1)).unwrap_err();
        assert!(err.contains("virtio-rng-pci"), "{err}");
    }
}
