rule train:
    input:
        dataset_files,
    output:
        f"results/runs/{RUN}.json",
    log:
        f"logs/train/{RUN}.log",
    benchmark:
        f"benchmarks/train/{RUN}.tsv"
    wildcard_constraints:
        world_size=world_size_pattern(multinode=False),
    priority: run_priority
    conda:
        ENV
    threads: train_threads
    resources:
        # Timed runs never share the machine: profiles/default caps bench_slot at 1.
        bench_slot=1,
        mem_mb=train_mem_mb,
        gpu=train_gpus,
        # The SLURM plugin would otherwise start one task per GPU (plugin issues #316, #459).
        tasks_per_gpu=0,
    params:
        data_dir=input_dir,
        options=run_options,
        omp_threads=omp_threads,
        pin=pin_cores,
        rendezvous=rendezvous,
        launcher=train_launcher,
    shell:
        # DDPBENCH_JOB_CPUS: the CPUs granted on this node, which threads_per_worker: auto divides.
        "{params.rendezvous} DDPBENCH_PIN={params.pin}"
        " DDPBENCH_JOB_CPUS={threads} OMP_NUM_THREADS={params.omp_threads}"
        " {params.launcher} -m ddpbench.train --data {params.data_dir} --out {output}"
        " --batch-size {wildcards.batch_size} --seed {wildcards.seed} {params.options} > {log} 2>&1"


use rule train as train_multinode with:
    wildcard_constraints:
        world_size=world_size_pattern(multinode=True),
    resources:
        # SLURM: one task per node, each a torchrun that starts that node's ranks.
        nodes=train_nodes,
        tasks=train_nodes,
        cpus_per_task=train_threads,
        mem_mb=train_mem_mb,
        gres=train_gres,
        tasks_per_gpu=0,
