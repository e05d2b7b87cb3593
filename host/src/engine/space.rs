//! How much virtual address space this process may still map: the smaller of
//! its `RLIMIT_AS` (`ulimit -v`, systemd's `LimitAS=`) and what the CPU and
//! kernel give user space (39 bits on Raspberry Pi OS kernels, 47 or 48
//! elsewhere), less what is mapped already.

/// The address space the engine plans its memory layout in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressSpace {
    /// Bits of user-space virtual addresses (e.g. 39, 47, 48).
    pub va_bits: u32,
    /// The soft `RLIMIT_AS` in bytes, if one is set.
    pub limit: Option<u64>,
    /// Bytes mapped already (`VmSize`).
    pub used: u64,
}

impl AddressSpace {
    /// This process's address space now. Where `/proc` cannot be read (not
    /// Linux, or a sandbox without it) no limit and nothing used is assumed,
    /// and the engine falls back at build time if the pool does not fit.
    pub fn probe() -> Self {
        Self {
            va_bits: va_bits(),
            limit: std::fs::read_to_string("/proc/self/limits")
                .ok()
                .and_then(|text| parse_limit(&text)),
            used: std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|text| parse_vm_size(&text))
                .unwrap_or(0),
        }
    }

    /// Bytes that may still be mapped.
    pub fn available(&self) -> u64 {
        let top = if self.va_bits >= 64 {
            u64::MAX
        } else {
            1u64 << self.va_bits
        };
        self.limit
            .unwrap_or(u64::MAX)
            .min(top)
            .saturating_sub(self.used)
    }
}

/// User-space address width, read off where the kernel put this thread's
/// stack: stacks sit just under the top of user space, so the highest set
/// bit of a stack address gives the width (0x7ffc... on x86_64: 47 bits;
/// 0x7f_ff... on a 39-bit arm64 kernel: 39). Never more than the pointer
/// width.
fn va_bits() -> u32 {
    let marker = 0u8;
    let address = std::ptr::addr_of!(marker) as usize;
    (usize::BITS - address.leading_zeros()).max(32)
}

/// The soft limit of "Max address space" in `/proc/self/limits`.
fn parse_limit(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max address space"))?;
    let soft = line["Max address space".len()..]
        .split_whitespace()
        .next()?;
    soft.parse().ok()
}

/// `VmSize` in `/proc/self/status`, in bytes.
fn parse_vm_size(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("VmSize:"))?;
    let kib: u64 = line["VmSize:".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_sizes_parse_as_the_kernel_writes_them() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max stack size            8388608              unlimited            bytes     \n\
                      Max address space         2048000000           unlimited            bytes     \n";
        assert_eq!(parse_limit(limits), Some(2_048_000_000));
        let unlimited =
            "Max address space         unlimited            unlimited            bytes     \n";
        assert_eq!(parse_limit(unlimited), None);
        assert_eq!(parse_limit("garbage"), None);
        let status = "Name:\touthost\nVmPeak:\t  200 kB\nVmSize:\t  123456 kB\n";
        assert_eq!(parse_vm_size(status), Some(123_456 * 1024));
        assert_eq!(parse_vm_size("VmSize:\tlots kB\n"), None);
    }

    #[test]
    fn available_space_is_the_smaller_bound_less_what_is_used() {
        let pi = AddressSpace {
            va_bits: 39,
            limit: None,
            used: 1 << 30,
        };
        assert_eq!(pi.available(), (512 << 30) - (1 << 30));
        let capped = AddressSpace {
            va_bits: 47,
            limit: Some(2_048_000_000),
            used: 3_000_000_000,
        };
        assert_eq!(capped.available(), 0);
    }

    #[test]
    fn this_process_sees_a_plausible_address_space() {
        let here = AddressSpace::probe();
        assert!((39..=64).contains(&here.va_bits), "{here:?}");
        assert!(here.available() > 0, "{here:?}");
    }
}
