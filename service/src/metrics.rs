use prometheus::{IntGaugeVec, Opts, Registry};

/// A registry holding `iceway_build_info{service,version}` and the process metrics
/// (`process_cpu_seconds_total`, `process_resident_memory_bytes`, ...). Services register
/// their own series on it; the admin listener exports it.
pub fn new_registry(service: &str, version: &str) -> Registry {
    let registry = Registry::new();
    let build_info = IntGaugeVec::new(
        Opts::new(
            "iceway_build_info",
            "Build of the running service; always 1.",
        ),
        &["service", "version"],
    )
    .expect("static metric definition is valid");
    build_info.with_label_values(&[service, version]).set(1);
    registry
        .register(Box::new(build_info))
        .expect("fresh registry has no build_info yet");
    #[cfg(target_os = "linux")]
    registry
        .register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("fresh registry has no process collector yet");
    registry
}

/// Text exposition of a registry.
pub fn encode(registry: &Registry) -> String {
    let encoder = prometheus::TextEncoder::new();
    encoder
        .encode_to_string(&registry.gather())
        .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_exports_build_info_and_process_metrics() {
        let text = encode(&new_registry("turn", "1.2.3"));
        assert!(
            text.contains(r#"iceway_build_info{service="turn",version="1.2.3"} 1"#),
            "{text}"
        );
        #[cfg(target_os = "linux")]
        assert!(text.contains("process_resident_memory_bytes"), "{text}");
    }
}
