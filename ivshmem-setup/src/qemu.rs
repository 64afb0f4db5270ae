//! `qemu-args` and `libvirt-xml`.

use crate::ConfigArg;
use anyhow::{Context, Result};
use std::path::Path;
use vgpu_config::{Config, VmConfig};
use vgpu_doorbell::ivshmem::VECTORS;

/// Arguments naming one VM of a config file.
#[derive(clap::Args)]
pub(crate) struct VmArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// VM id.
    #[arg(long)]
    vm: u32,
}

/// The VM and the real size of its region: the file's if it exists, else the config's.
fn vm_and_size(args: &VmArgs) -> Result<(Config, VmConfig, u64)> {
    let config = Config::load(&args.config.config)?;
    let vm = config.vm(args.vm)?.clone();
    let size = match std::fs::metadata(&vm.region) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => config.region_size,
        Err(e) => return Err(e).with_context(|| vm.region.display().to_string()),
    };
    Ok((config, vm, size))
}

/// A size as QEMU and libvirt spell it: whole MiB where possible.
fn mib_or_bytes(size: u64) -> (u64, &'static str) {
    if size.is_multiple_of(1 << 20) { (size >> 20, "M") } else { (size, "") }
}

fn device_id(vm: &VmConfig) -> String {
    format!("vgpu-vm{}", vm.id)
}

/// The QEMU arguments for `vm`'s region of `size` bytes.
pub(crate) fn qemu_arguments(vm: &VmConfig, size: u64) -> Vec<String> {
    let (n, unit) = mib_or_bytes(size);
    let id = device_id(vm);
    if let Some(socket) = &vm.doorbell {
        // QEMU receives the region's fd (and its size) from the doorbell holder.
        return vec![
            "-chardev".into(),
            format!("socket,path={},id={id}", socket.display()),
            "-device".into(),
            format!("ivshmem-doorbell,chardev={id},vectors={VECTORS}"),
        ];
    }
    vec![
        "-object".into(),
        format!(
            "memory-backend-file,id={id},size={n}{unit},share=on,mem-path={}",
            vm.region.display()
        ),
        "-device".into(),
        format!("ivshmem-plain,memdev={id}"),
    ]
}

pub(crate) fn qemu_args(args: &VmArgs) -> Result<()> {
    let (_, vm, size) = vm_and_size(args)?;
    let _ = say!("{}\n", qemu_arguments(&vm, size).join(" "));
    Ok(())
}

pub(crate) fn libvirt_xml(args: &VmArgs) -> Result<()> {
    let (_, vm, size) = vm_and_size(args)?;
    let (n, unit) = mib_or_bytes(size);
    let unit = if unit.is_empty() { "B" } else { unit };
    let name = device_id(&vm);
    if let Some(socket) = &vm.doorbell {
        let _ = say!(
            "<shmem name='{name}'>\n  <model type='ivshmem-doorbell'/>\n  <size unit='{unit}'>{n}</size>\n  \
             <server path='{}'/>\n  <msi vectors='{VECTORS}' ioeventfd='on'/>\n</shmem>\n",
            socket.display()
        );
        eprintln!(
            "note: the doorbell holder (`ivshmem-setup serve`) must run before the VM starts; it \
             sends the region {} to QEMU.",
            vm.region.display()
        );
        return Ok(());
    }
    let _ = say!(
        "<shmem name='{name}'>\n  <model type='ivshmem-plain'/>\n  <size unit='{unit}'>{n}</size>\n</shmem>\n"
    );
    let expected = Path::new("/dev/shm").join(&name);
    if vm.region == expected {
        eprintln!("note: libvirt maps /dev/shm/{name}, which is this VM's region.");
    } else {
        eprintln!(
            "note: libvirt maps /dev/shm/{name}, but this VM's region is {}; set `region = \"{}\"` \
             for VM {} (or use qemu-args) so that guest and mediator share one file.",
            vm.region.display(),
            expected.display(),
            vm.id
        );
    }
    Ok(())
}
