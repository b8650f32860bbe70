"""tfconvnets: train, evaluate, benchmark and export ResNet-50 v1.5 / ResNeXt101 / SE-ResNeXt101.

horovodrun -np 8 python main.py --arch=resnext101-32x4d --data_dir=/data/imagenet --model_dir=/ckpt

The same command line is installed as the `tfconvnets` console script.
"""

from tfconvnets.runtime.cli import main

if __name__ == "__main__":
    main()
