# The all-reduce timings the scaling prediction (ddpbench.predict, in summary.json) is fitted to:
# one short ddpbench.commbench launch for all measured world sizes of 2 or more that run on one
# node, launched as the largest one's runs are (emulated networks included) and timed alone like
# them (ddpbench.plan.CommBench: with grid.variants, the baseline's only).

# A short sweep around DDP's bucket sizes, plus the model's own buckets: seconds, most of them start-up.
COMM_SIZES = "8,1024,65536,1048576,4194304,16777216"
COMM_REPS, COMM_BUDGET_S = 5, 0.2


if COMM_WORLD_SIZES:

    rule commbench:
        output:
            [f"results/{COMM}ws{w}.json" for w in COMM_WORLD_SIZES],
        log:
            f"logs/{COMM}commbench.log",
        benchmark:
            f"benchmarks/{COMM}commbench.tsv"
        conda:
            ENV
        # As the launch size's runs: their threads per rank.
        threads: comm_threads
        resources:
            # Timed alone, as the training runs are (profiles/default caps bench_slot at 1).
            bench_slot=1,
            mem_mb=comm_mem_mb,
            gpu=comm_gpus,
            tasks_per_gpu=0,
        params:
            launch=launch_prefix,
            launcher=comm_launcher,
            options=comm_options,
            pin=pin_cores,
            omp_threads=comm_omp_threads,
            world_sizes=",".join(map(str, COMM_WORLD_SIZES)),
            sizes=COMM_SIZES,
            reps=COMM_REPS,
            budget=COMM_BUDGET_S,
        shell:
            # Under ddpbench.launch, which ends it if Snakemake dies, as the training launches.
            "DDPBENCH_PIN={params.pin} DDPBENCH_JOB_CPUS={threads} OMP_NUM_THREADS={params.omp_threads} {params.launch} -- {params.launcher} -m ddpbench.commbench"
            " --world-sizes {params.world_sizes} --out {output} {params.options}"
            " --sizes {params.sizes} --reps {params.reps} --budget-s {params.budget} > {log} 2>&1"
