//! The configuration parser on arbitrary text: never a panic; an error always says
//! something; an accepted configuration holds its invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match vgpu_config::Config::parse(text) {
        Ok(config) => {
            assert!(!config.vms.is_empty() && !config.pools.is_empty());
            assert!(config.geometry.validate().is_ok());
            assert!(config.region_size.is_power_of_two());
            assert!(
                config.vms.iter().all(|vm| config.pools.contains_key(&vm.pool) && vm.weight >= 1)
            );
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
