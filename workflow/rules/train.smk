rule train:
    input:
        dataset_files,
    output:
        "results/runs/ws{world_size}_bs{batch_size}_seed{seed}.json",
    log:
        "logs/train/ws{world_size}_bs{batch_size}_seed{seed}.log",
    benchmark:
        "benchmarks/train/ws{world_size}_bs{batch_size}_seed{seed}.tsv"
    wildcard_constraints:
        world_size=world_size_pattern(multinode=False),
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
        options=train_options(),
        threads_per_worker=threads_per_worker,
        pin=pin_cores,
    shell:
        # OMP_NUM_THREADS per rank: Snakemake would otherwise give every rank all the job's threads.
        # --standalone: torchrun's rendezvous on a free port, so concurrent launches never collide.
        train_command("torchrun --standalone --nproc-per-node {wildcards.world_size}")


rule train_multinode:
    input:
        dataset_files,
    output:
        "results/runs/ws{world_size}_bs{batch_size}_seed{seed}.json",
    log:
        "logs/train/ws{world_size}_bs{batch_size}_seed{seed}.log",
    benchmark:
        "benchmarks/train/ws{world_size}_bs{batch_size}_seed{seed}.tsv"
    wildcard_constraints:
        world_size=world_size_pattern(multinode=True),
    conda:
        ENV
    threads: train_threads
    resources:
        # SLURM: one task per node, each a torchrun that starts that node's ranks.
        mpi="srun",
        nodes=train_nodes,
        tasks=train_nodes,
        cpus_per_task=train_threads,
        mem_mb=train_mem_mb,
        gres=train_gres,
        tasks_per_gpu=0,
    params:
        data_dir=input_dir,
        options=train_options(),
        threads_per_worker=threads_per_worker,
        pin=pin_cores,
        ranks_per_node=ranks_on_node,
    shell:
        # The SLURM plugin strips SLURM_JOB_NODELIST from the job's environment: ask squeue for the
        # nodes. The rendezvous port is derived from the job id, so concurrent jobs differ.
        'head=$(scontrol show hostnames "$(squeue -h -j "$SLURM_JOB_ID" -o %N)" | head -n1);'
        " port=$((29400 + SLURM_JOB_ID % 1000)); "
        + train_command(
            "{resources.mpi} --nodes={resources.nodes} --ntasks-per-node=1"
            " --cpus-per-task={resources.cpus_per_task} --kill-on-bad-exit=1"
            " torchrun --nnodes {resources.nodes} --nproc-per-node {params.ranks_per_node}"
            ' --rdzv-backend c10d --rdzv-endpoint "$head:$port" --rdzv-id "$SLURM_JOB_ID"'
        )
