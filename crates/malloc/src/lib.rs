//! The C allocator's one setting the workers need, the one call that gives
//! its free memory back, and the project's only `unsafe` code.
//!
//! glibc's malloc serves a block of 128 KiB or more with its own mapping,
//! returned to the system when freed — but each time such a block is freed
//! it raises that threshold to the block's size, so the next documents of
//! that size come from the heap, whose freed memory the process keeps. A
//! mapper reading documents of tens of MiB thus held several copies' worth
//! of freed memory: its peak RSS was about 15 × its largest row where 8 ×
//! was live. A fixed threshold keeps every large block a mapping of its
//! own, given back on free.

/// Blocks of this size or more get a mapping of their own.
pub const LARGE_BLOCK: usize = 1024 * 1024;

/// Fixes glibc's mmap threshold at [`LARGE_BLOCK`], so large blocks are
/// given back to the system when freed. Returns whether it was set (always
/// false on other C libraries, whose defaults are left alone).
pub fn return_large_blocks() -> bool {
    imp::set_mmap_threshold(LARGE_BLOCK)
}

/// Gives the free memory of every allocator arena back to the system.
/// Small blocks (the parsed values of a large document) are served from
/// per-thread arenas, which keep what was freed: after a document of tens
/// of MiB, each thread that held one would go on holding its size.
/// Returns whether any memory was given back.
pub fn give_back_free_memory() -> bool {
    imp::trim()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    pub fn trim() -> bool {
        // SAFETY: malloc_trim only returns free pages of glibc's arenas to
        // the system under the arenas' locks; it has no preconditions.
        #[allow(unsafe_code)]
        let given = unsafe { libc::malloc_trim(0) };
        given == 1
    }

    pub fn set_mmap_threshold(bytes: usize) -> bool {
        let Ok(bytes) = libc::c_int::try_from(bytes) else {
            return false;
        };
        // SAFETY: mallopt only changes a tuning parameter of glibc's
        // allocator; it takes the allocator's lock, may be called at any
        // time from any thread, and has no memory-safety preconditions.
        #[allow(unsafe_code)]
        let set = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, bytes) };
        set == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    pub fn trim() -> bool {
        false
    }

    pub fn set_mmap_threshold(_bytes: usize) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_threshold_is_set_on_glibc() {
        let set = super::return_large_blocks();
        assert_eq!(set, cfg!(all(target_os = "linux", target_env = "gnu")));
    }

    #[test]
    fn freed_small_blocks_are_given_back() {
        // 32 MiB in blocks of 1 KiB, freed: the arena keeps them until trimmed.
        let blocks: Vec<Vec<u8>> = (0..32 * 1024).map(|i| vec![i as u8; 1024]).collect();
        drop(blocks);
        let given = super::give_back_free_memory();
        if cfg!(all(target_os = "linux", target_env = "gnu")) {
            assert!(
                given,
                "malloc_trim gave nothing back after 32 MiB were freed"
            );
        }
    }
}
