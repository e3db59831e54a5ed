//! Ferry's integration tests: one test binary, real processes, real certificates,
//! ports picked at run time on 127.0.0.1. Build the workspace first
//! (`cargo build --workspace`); the harness is in `tests/src/lib.rs`.

mod t05_structure;
mod t07_systemd;
mod t10_iris;
mod t12_logs;
mod t15_failstop;
mod t16_worker_failstop;
mod t20_failures;
mod t25_power_loss;
mod t30_restart;
mod t40_security;
mod t41_containment;
mod t42_bundles;
mod t43_member_certs;
mod t44_bounds;
mod t45_access;
mod t46_secrets;
mod t47_revocation;
mod t48_audit;
mod t49_matrix;
mod t50_specs;
mod t51_limits;
mod t55_containers;
mod t56_sklearn;
mod t57_compose;
mod t58_image_cache;
mod t59_input_cache;
mod t60_dev;
mod t70_replication;
mod t71_membership;
mod t72_failover;
mod t75_partitions;
mod t80_corruption;
mod t83_artifacts;
mod t85_s3;
mod t86_s3_direct;
mod t90_scheduling;
mod t91_wide;
mod t95_metrics;
mod t96_prometheus;
mod t97_reproducible;
mod t98_ui;
