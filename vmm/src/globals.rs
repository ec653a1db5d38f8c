//! `-global DRIVER.PROPERTY=VALUE`: a property for every device of a type, applied to the
//! plan's functions before the build (QEMU applies globals when it creates a device); the
//! planner gets them too (`PlanRequest::globals`), for the properties that decide the plan
//! (the south bridge's `acpi-pci-hotplug-with-bridge-support`). Only the properties a model
//! or the planner honours (its kind's `globals()`, e.g. ICH9 LPC's `noreboot`) are
//! accepted; a property the type does not have gets QEMU's error; a type the machine does
//! not create is ignored, as in QEMU.

use machine::Plan;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Global {
    pub driver: String,
    pub property: String,
    pub value: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GlobalError {
    #[error("-global {0}: expected DRIVER.PROPERTY=VALUE")]
    Syntax(String),
    #[error("-global {0}.{1}: machina does not apply this global (no model reads it)")]
    NotHonoured(String, String),
    #[error("can't apply global {0}.{1}={2}: Property '{0}.{1}' not found")]
    NotFound(String, String, String),
    #[error("can't apply global {0}.{1}={2}: Parameter '{1}' expects 'on' or 'off'")]
    NotBool(String, String, String),
    #[error("can't apply global {0}.{1}={2}: {3}")]
    BadValue(String, String, String, String),
}

impl Global {
    pub fn parse(arg: &str) -> Result<Self, GlobalError> {
        let syntax = || GlobalError::Syntax(arg.to_string());
        let (name, value) = arg.split_once('=').ok_or_else(syntax)?;
        let (driver, property) = name.rsplit_once('.').ok_or_else(syntax)?;
        if driver.is_empty() || property.is_empty() {
            return Err(syntax());
        }
        Ok(Self {
            driver: driver.to_string(),
            property: property.to_string(),
            value: value.to_string(),
        })
    }

    /// Refused at once when machina would not honour it (before anything is built).
    pub fn check_honoured(&self) -> Result<(), GlobalError> {
        // IDE drives take any property of theirs as a default (vmm/src/config.rs).
        let ide_property = machine::Catalog::builtin()
            .device_type(&self.driver)
            .is_some_and(|t| {
                t.bus.as_deref() == Some("IDE") && t.property(&self.property).is_some()
            });
        // The planner decides ACPI bridge hot-plug from the south bridge's properties.
        let planner_property = machine::Catalog::builtin()
            .device_type(&self.driver)
            .is_some_and(|t| t.acpi_bridge_hotplug.contains(&self.property));
        let honoured = ide_property
            || planner_property
            || devices::kinds::pci_kind(&self.driver)
                .is_some_and(|k| k.globals().contains(&self.property.as_str()));
        if honoured {
            return Ok(());
        }
        Err(GlobalError::NotHonoured(
            self.driver.clone(),
            self.property.clone(),
        ))
    }
}

/// Set each global on the plan's functions of its type.
pub fn apply(plan: &mut Plan, globals: &[Global]) -> Result<(), GlobalError> {
    for g in globals {
        let err = |f: fn(String, String, String) -> GlobalError| {
            f(g.driver.clone(), g.property.clone(), g.value.clone())
        };
        for f in plan.pci.iter_mut().filter(|f| f.type_name == g.driver) {
            if !f.properties.contains(&g.property) {
                return Err(err(GlobalError::NotFound));
            }
            let def = machine::Catalog::builtin()
                .device_type(&g.driver)
                .and_then(|t| t.property(&g.property).cloned());
            let v = match def {
                // Other types with the catalog's grammar (extended-tseg-mbytes: uint16).
                Some(def) if def.ty != machine::PropType::Bool => {
                    def.decode(&g.driver, &g.value).map_err(|e| {
                        GlobalError::BadValue(
                            g.driver.clone(),
                            g.property.clone(),
                            g.value.clone(),
                            e.to_string(),
                        )
                    })?
                }
                // Bools with QEMU's spellings.
                _ => machine::PropValue::Bool(
                    machine::qapi_bool_parse(&g.value).ok_or_else(|| err(GlobalError::NotBool))?,
                ),
            };
            f.properties.insert(g.property.clone(), v);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_texts() {
        let g = Global::parse("ICH9-LPC.noreboot=true").unwrap();
        assert_eq!(
            (g.driver.as_str(), g.property.as_str()),
            ("ICH9-LPC", "noreboot")
        );
        g.check_honoured().unwrap();
        assert!(Global::parse("foo").is_err());
        assert_eq!(
            Global::parse("ICH9-LPC.foo=1")
                .unwrap()
                .check_honoured()
                .unwrap_err()
                .to_string(),
            "-global ICH9-LPC.foo: machina does not apply this global (no model reads it)"
        );
    }
}
