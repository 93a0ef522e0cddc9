rule download_cifar10:
    output:
        "resources/cifar-10-python.tar.gz",
    log:
        "logs/data/download_cifar10.log",
    conda:
        ENV
    params:
        url=config["data"]["url"],
        md5=config["data"]["md5"],
        timeout=config["data"]["timeout"],
        retries=config["data"]["retries"],
    shell:
        "python -m ddpbench.data download --url {params.url:q} --md5 {params.md5}"
        " --timeout {params.timeout} --retries {params.retries} --out {output} > {log} 2>&1"


rule cifar10_cache:
    input:
        archive=cifar10_archive,
    output:
        expand("resources/cifar10/{name}", name=DATASET_FILES),
    log:
        "logs/data/cifar10_cache.log",
    conda:
        ENV
    params:
        md5=config["data"]["md5"],
        out_dir=output_dir,
    shell:
        "python -m ddpbench.data convert --archive {input.archive:q} --md5 {params.md5}"
        " --out {params.out_dir} > {log} 2>&1"


rule synthetic_cache:
    output:
        expand("resources/synthetic/{name}", name=DATASET_FILES),
    log:
        "logs/data/synthetic_cache.log",
    conda:
        ENV
    params:
        train_size=config["data"]["synthetic"]["train_size"],
        test_size=config["data"]["synthetic"]["test_size"],
        seed=config["data"]["synthetic"]["seed"],
        out_dir=output_dir,
    shell:
        "python -m ddpbench.data synthetic --train-size {params.train_size} --test-size {params.test_size}"
        " --seed {params.seed} --out {params.out_dir} > {log} 2>&1"


# Compute nodes often have no internet: download where Snakemake runs.
localrules:
    download_cifar10,
