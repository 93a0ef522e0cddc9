"""What CIFAR-10 is: where the archive comes from, its classes, splits and sizes, its channel statistics.

Plain constants with no imports, so that every module that handles the dataset (the download,
the archive reader, the cache, the batches, the engine) takes them from here without importing
one another: ddpbench.archive writes through ddpbench.cache, which needs the class names too.
"""

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_COUNTS = {"train": 50_000, "test": 10_000}
SPLITS = ("train", "test")

# The study's Normalize() constants: the training set's per-channel mean and standard deviation.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
