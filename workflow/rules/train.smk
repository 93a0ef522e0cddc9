rule train:
    input:
        dataset_files,
    output:
        "results/runs/ws{world_size}_bs{batch_size}_seed{seed}.json",
    log:
        "logs/train/ws{world_size}_bs{batch_size}_seed{seed}.log",
    benchmark:
        "benchmarks/train/ws{world_size}_bs{batch_size}_seed{seed}.tsv"
    conda:
        ENV
    threads: train_threads
    resources:
        # Timed runs never share the machine: profiles/default caps bench_slot at 1.
        bench_slot=1,
        gpu=train_gpus,
    params:
        data_dir=input_dir,
        options=train_options(),
        threads_per_worker=threads_per_worker,
    shell:
        # OMP_NUM_THREADS per rank: Snakemake would otherwise give every rank all the job's threads.
        # --standalone: torchrun's rendezvous on a free port, so concurrent launches never collide.
        "DDPBENCH_LAUNCH_TIME=$(date +%s.%N) OMP_NUM_THREADS={params.threads_per_worker}"
        " torchrun --standalone --nproc-per-node {wildcards.world_size}"
        " -m ddpbench.train --data {params.data_dir} --out {output}"
        " --batch-size {wildcards.batch_size} --seed {wildcards.seed}"
        " --threads-per-worker {params.threads_per_worker} {params.options} > {log} 2>&1"
