//! `bar.sync 0` with exited threads, and barriers in divergent code, against the PTX ISA.
//!
//! Sources: PTX ISA 9.1 §9.7.13.1 "Parallel Synchronization and Communication Instructions: bar,
//! barrier" (same title in 8.5/8.7): "If no thread count is specified, all threads in the CTA
//! participate in the barrier", "`barrier{.cta}` instruction causes executing thread to wait for
//! all non-exited threads from its warp and marks warps' arrival at barrier. In addition ...
//! the `barrier{.cta}.red` and `barrier{.cta}.sync` instructions causes executing thread to wait
//! for non-exited threads of all other warps participating in the barrier to arrive", "prior
//! memory accesses requested by this thread are performed relative to all threads participating
//! in the barrier", and "`bar{.cta}.sync` is equivalent to `barrier{.cta}.sync.aligned`" where
//! `.aligned` "indicates that all threads in CTA will execute the same `barrier{.cta}`
//! instruction. In conditionally executed code, an aligned `barrier{.cta}` instruction should only
//! be used if it is known that all threads in CTA evaluate the condition identically, otherwise
//! behavior is undefined."
//!
//! PTX ISA 9.1 §9.7.12.7 "Control Flow Instructions: exit": "Barriers exclusively waiting on
//! arrivals from exited threads are always released."

mod common;

use common::*;
use freelunch_ptx::{FaultKind, Order};

const THREADS: u32 = 128;

/// Threads that do not exit: warps 0 and 2 whole, lanes 0..19 of warp 1; warp 3 (after a short
/// loop, so that it can exit after the others are already waiting) and lanes 20..31 of warp 1
/// exit.
fn live(t: u32) -> bool {
    t < 96 && !((32..64).contains(&t) && t % 32 >= 20)
}

/// A live thread of another warp whose value `t` reads after the barrier.
fn partner(t: u32) -> u32 {
    if (32..64).contains(&t) {
        t ^ 32
    } else {
        t ^ 64
    }
}

fn value(t: u32) -> u32 {
    t * 3 + 1
}

const EXIT_KERNEL: &str = r#"
.visible .entry bar_exit(.param .u64 pout)
{
    .reg .pred %p<8>;
    .reg .b32 %r<16>;
    .reg .b64 %rd<16>;
    .shared .align 4 .b8 sh[512];
    ld.param.u64 %rd1, [pout];
    cvta.to.global.u64 %rd1, %rd1;
    mov.u32 %r1, %tid.x;
    and.b32 %r2, %r1, 31;
    shr.u32 %r3, %r1, 5;
    setp.lt.u32 %p1, %r1, 96;
    @%p1 bra NOT3;
    mov.u32 %r9, 0;
LOOP:
    add.u32 %r9, %r9, 1;
    setp.lt.u32 %p5, %r9, 40;
    @%p5 bra LOOP;
    exit;
NOT3:
    setp.eq.u32 %p2, %r3, 1;
    setp.ge.u32 %p3, %r2, 20;
    and.pred %p4, %p2, %p3;
    @%p4 exit;
    mov.u64 %rd2, sh;
    mul.wide.u32 %rd3, %r1, 4;
    add.s64 %rd4, %rd2, %rd3;
    mul.lo.u32 %r4, %r1, 3;
    add.u32 %r4, %r4, 1;
    st.shared.u32 [%rd4], %r4;
    bar.sync 0;
    xor.b32 %r5, %r1, 64;
    xor.b32 %r6, %r1, 32;
    setp.eq.u32 %p6, %r3, 1;
    selp.u32 %r7, %r6, %r5, %p6;
    mul.wide.u32 %rd5, %r7, 4;
    add.s64 %rd6, %rd2, %rd5;
    ld.shared.u32 %r8, [%rd6];
    add.s64 %rd7, %rd1, %rd3;
    st.global.u32 [%rd7], %r8;
    ret;
}
"#;

/// PTX ISA 9.1 §9.7.13.1 bar/barrier and §9.7.12.7 exit: `bar.sync 0` in a 4-warp block where a
/// whole warp and part of another have exited completes for the remaining threads, and their
/// shared-memory stores before it are visible to the other warps after it. Run with the warps in
/// forward, reverse and two shuffled orders, so the exits happen both before and after the other
/// warps reach the barrier.
#[test]
fn bar_sync_waits_only_for_non_exited_threads() {
    for order in [
        Order::Forward,
        Order::Reverse,
        Order::Shuffled(1),
        Order::Shuffled(7),
    ] {
        let dev = device_with(order);
        let pout = output(&dev, THREADS as usize, 0xee);
        if let Err(e) = launch(
            &dev,
            &format!("{HEADER}{EXIT_KERNEL}"),
            "bar_exit",
            1,
            THREADS,
            &[&pout.to_le_bytes()],
        ) {
            panic!("{order:?}: {e}");
        }
        let out = download_u32(&dev, pout, THREADS as usize);
        for t in 0..THREADS {
            let want = if live(t) {
                assert!(live(partner(t)));
                value(partner(t))
            } else {
                0xeeee_eeee
            };
            assert_eq!(out[t as usize], want, "{order:?}: thread {t}");
        }
    }
}

/// Lanes 0..15 of every warp run a `bar.sync 0` inside a branch; lanes 16..31 skip it (and, in
/// `other_arm`, whatever it holds).
fn divergent_kernel(other_arm: &str) -> String {
    format!(
        r#"{HEADER}
.visible .entry bar_divergent(.param .u64 pout)
{{
    .reg .pred %p<4>;
    .reg .b32 %r<8>;
    .reg .b64 %rd<8>;
    ld.param.u64 %rd1, [pout];
    cvta.to.global.u64 %rd1, %rd1;
    mov.u32 %r1, %tid.x;
    and.b32 %r2, %r1, 31;
    setp.ge.u32 %p1, %r2, 16;
    @%p1 bra OTHER;
    bar.sync 0;
    bra.uni DONE;
OTHER:
{other_arm}
DONE:
    mul.wide.u32 %rd2, %r1, 4;
    add.s64 %rd3, %rd1, %rd2;
    st.global.u32 [%rd3], %r1;
    ret;
}}
"#
    )
}

fn run_divergent(other_arm: &str) -> freelunch_ptx::Result<()> {
    let dev = device();
    let pout = output(&dev, 64, 0);
    launch(
        &dev,
        &divergent_kernel(other_arm),
        "bar_divergent",
        1,
        64,
        &[&pout.to_le_bytes()],
    )
}

/// PTX ISA 9.1 §9.7.13.1: `bar.sync` is `barrier.sync.aligned`, and a barrier in a branch only
/// half of each warp takes is undefined by the ISA ("should only be used if it is known that all
/// threads in CTA evaluate the condition identically"). Here the other half runs to `ret`, and
/// §9.7.12.7 ("Barriers exclusively waiting on arrivals from exited threads are always released")
/// with the arrival rule ("wait for all non-exited threads from its warp") is what Volta and later
/// GPUs do: the barrier releases the lanes that reach it. The executor follows that rule (the
/// barrier waits for the non-exited threads of the block), so this launch must complete; the
/// faulting forms are the ones where the other lanes stay alive (next two tests).
#[test]
fn bar_sync_in_a_branch_half_a_warp_takes_while_the_rest_exits_releases() {
    let r = run_divergent("");
    assert!(r.is_ok(), "{:?}", r.err());
}

/// PTX ISA 9.1 §9.7.13.1: "all threads in CTA will execute the same `barrier{.cta}`
/// instruction" — the two halves of each warp reaching two different `bar.sync 0` instructions
/// is not that, and must be reported too.
#[test]
fn bar_sync_two_different_barriers_in_one_warp_is_reported() {
    let r = run_divergent("    bar.sync 0;");
    expect_fault(r, &[FaultKind::Divergence, FaultKind::Deadlock], "bar");
}

/// The control: the same kernel with the branch condition never true runs cleanly.
#[test]
fn bar_sync_divergent_kernel_control() {
    let dev = device();
    let pout = output(&dev, 64, 0);
    let ptx =
        divergent_kernel("").replace("setp.ge.u32 %p1, %r2, 16;", "setp.ge.u32 %p1, %r2, 32;");
    run(&dev, &ptx, "bar_divergent", 1, 64, &[&pout.to_le_bytes()]);
    assert_eq!(download_u32(&dev, pout, 64), (0..64).collect::<Vec<u32>>());
}
