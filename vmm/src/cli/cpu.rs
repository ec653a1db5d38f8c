//! `-smp` (the topology as given) and `-cpu` (model, features, check/enforce).

use super::*;

/// `-smp` as given: the CPU count (computed as QEMU does when omitted), `maxcpus=` and the
/// topology keys, which the planner resolves with the machine type's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmpSpec {
    pub cpus: u32,
    pub max_cpus: Option<u32>,
    pub keys: machine::SmpKeys,
}

impl Default for SmpSpec {
    fn default() -> Self {
        Self {
            cpus: 1,
            max_cpus: None,
            keys: machine::SmpKeys::default(),
        }
    }
}

/// Parse `-smp [cpus=]N[,maxcpus=N][,sockets=S][,dies=D][,clusters=C][,cores=C][,threads=T]`.
pub(super) fn parse_smp(text: &str) -> Result<SmpSpec, CliError> {
    let mut cpus: Option<u32> = None;
    let mut spec = SmpSpec::default();
    for (i, item) in split_keyval(text).iter().enumerate() {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k, v),
            None if i == 0 => ("cpus", item.as_str()),
            None => return Err(CliError::BadCpus(text.to_string())),
        };
        let slot = match key {
            "cpus" => &mut cpus,
            "maxcpus" => &mut spec.max_cpus,
            "sockets" => &mut spec.keys.sockets,
            "dies" => &mut spec.keys.dies,
            "clusters" => &mut spec.keys.clusters,
            "cores" => &mut spec.keys.cores,
            "threads" => &mut spec.keys.threads,
            other => return Err(CliError::BadTopology(text.to_string(), other.to_string())),
        };
        let n: u32 = value
            .parse()
            .map_err(|_| CliError::BadSmpValue(text.to_string(), key.to_string()))?;
        if n == 0 {
            return Err(CliError::ZeroCpus(text.to_string()));
        }
        *slot = Some(n);
    }
    // Omitted cpus: maxcpus, else the product of the given keys (QEMU reaches the same
    // topology from either).
    let k = spec.keys;
    spec.cpus = cpus.or(spec.max_cpus).unwrap_or_else(|| {
        [k.sockets, k.dies, k.clusters, k.cores, k.threads]
            .iter()
            .map(|v| v.unwrap_or(1))
            .fold(1u32, u32::saturating_mul)
    });
    Ok(spec)
}

/// Parse `-cpu MODEL[,+feat][,-feat][,feat=on|off]...`: machina offers `host` and `max`
/// (both KVM's supported CPUID) with QEMU's feature names. As in QEMU, `-feat` beats `+feat`
/// and both beat `feat=`; other properties are refused with QEMU's text.
/// A CPU model request: the model, its feature requests, and `check`/`enforce`.
pub(super) type CpuRequest = (crate::cpuid::CpuModel, Vec<(String, bool)>, [bool; 2]);

pub(super) fn parse_cpu(text: &str) -> Result<CpuRequest, CliError> {
    let items = split_keyval(text);
    let name = items.first().map(String::as_str).unwrap_or("");
    if name.is_empty() {
        return Err(CliError::EmptyCpu);
    }
    let model = crate::cpuid::CpuModel::from_name(name)
        .ok_or_else(|| CliError::UnknownCpuModel(name.to_string()))?;
    let ty = model.type_name();
    let (mut plus, mut minus, mut props) = (Vec::new(), Vec::new(), Vec::<(String, bool)>::new());
    let mut checks = [true, false];
    let mut ambiguous = false;
    let mut levels: Vec<(String, u32)> = Vec::new();
    for item in &items[1..] {
        let known = |f: &str| crate::cpuid::feature_bit(f).is_some();
        if let Some(f) = item.strip_prefix('+').or_else(|| item.strip_prefix('-')) {
            let feature = crate::cpuid::canonical_feature(f);
            if !known(&feature) {
                return Err(CliError::Plain(format!(
                    "Property '{ty}.{feature}' not found"
                )));
            }
            if item.starts_with('+') {
                plus.push(feature);
            } else {
                minus.push(feature);
            }
            continue;
        }
        let (key, value) = item.split_once('=').unwrap_or((item.as_str(), "on"));
        // A global apic-id is overridden by the board, which numbers every CPU from the
        // topology (QEMU's pc boards set it after the globals): checked, not kept.
        if key == "apic-id" {
            value.parse::<u32>().map_err(|_| {
                CliError::Plain(format!(
                    "can't apply global {ty}.apic-id={value}: Parameter 'apic-id' expects uint64"
                ))
            })?;
            continue;
        }
        if matches!(
            key,
            "level" | "xlevel" | "xlevel2" | "min-level" | "min-xlevel" | "min-xlevel2"
        ) && matches!(model, crate::cpuid::CpuModel::Named(_))
        {
            let v = machine::parse_u64_auto(value)
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| {
                    CliError::Plain(format!(
                        "can't apply global {ty}.{key}={value}: Parameter '{key}' expects uint64"
                    ))
                })?;
            levels.push((key.to_string(), v));
            continue;
        }
        if key == "check" || key == "enforce" {
            let on = machine::qapi_bool_parse(value).ok_or_else(|| {
                CliError::Plain(format!(
                    "can't apply global {ty}.{key}={value}: Parameter '{key}' expects 'on' or 'off'"
                ))
            })?;
            checks[usize::from(key == "enforce")] = on;
            continue;
        }
        let feature = crate::cpuid::canonical_feature(key);
        if !known(&feature) {
            return Err(CliError::CpuProperty(
                ty.to_string(),
                format!("{key}={value}"),
                key.to_string(),
            ));
        }
        let on = machine::qapi_bool_parse(value).ok_or_else(|| {
            CliError::Plain(format!(
                "can't apply global {ty}.{key}={value}: Parameter '{key}' expects 'on' or 'off'"
            ))
        })?;
        // QEMU's x86_cpu_parse_featurestr: a +feat/-feat given before wins, with a warning.
        for (list, sign) in [(&plus, '+'), (&minus, '-')] {
            if list.contains(&feature) {
                ambiguous = true;
                crate::logging::report_error(&format!(
                    "warning: Ambiguous CPU model string. Don't mix both \"{sign}{feature}\" and \"{feature}={value}\""
                ));
            }
        }
        props.retain(|(f, _)| *f != feature);
        props.push((feature, on));
    }
    if ambiguous {
        crate::logging::report_error(
            "warning: Compatibility of ambiguous CPU model strings won't be kept on future QEMU \
             versions",
        );
    }
    let mut features = props;
    features.extend(plus.into_iter().map(|f| (f, true)));
    features.extend(minus.into_iter().map(|f| (f, false)));
    let model = match model {
        crate::cpuid::CpuModel::Named(def) => {
            crate::cpuid::CpuModel::Named(crate::cpu_models::with_levels(def, &levels))
        }
        other => other,
    };
    Ok((model, features, checks))
}
