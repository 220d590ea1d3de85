"""beam-image-labeller: installable locally and on Dataflow workers (--setup_file ./setup.py)."""

from setuptools import find_packages, setup

setup(
    name="beam-image-labeller",
    version="0.1.0",
    description="Label images with MobileNetV3 on Apache Beam: one Parquet row per input URI.",
    packages=find_packages(include=["beam_pipeline", "beam_pipeline.*"]),
    package_data={"beam_pipeline.report": ["page.html", "report.css"]},
    python_requires=">=3.10",
    install_requires=[
        "apache-beam>=2.60,<3",
        # The CPU build is enough for MobileNetV3 on Dataflow's CPU workers; elsewhere the full wheel.
        "tensorflow-cpu>=2.16,<2.22; platform_system == 'Linux' and platform_machine == 'x86_64'",
        "tensorflow>=2.16,<2.22; platform_system != 'Linux' or platform_machine != 'x86_64'",
        # The default runtime for SavedModels (--backend openvino); TensorFlow above stays for --backend tensorflow
        # and TF Hub handles, and is imported only by them.
        "openvino>=2025.0,<2027",
        "huggingface_hub>=0.23,<3",
        "pillow>=10,<13",
        "simplejpeg>=1.9,<2",  # JPEGs decoded by libjpeg-turbo in one call (decode/preprocess.py); wheels bundle it
        "fsspec[http]>=2024.3",  # http(s) reads need aiohttp, which beam_pipeline.reading also uses directly
        # gs:// inputs and models: Dataflow's --setup_file installs these requirements on workers, never an extra.
        "gcsfs>=2024.3",
        "pyarrow>=14,<26",
        "numpy>=1.26,<3",
    ],
    extras_require={
        # TF Hub / Kaggle handles: tensorflow-hub needs tf-keras, which pulls in the full tensorflow wheel.
        # tensorflow-hub 0.16 imports pkg_resources, which setuptools 81 and later no longer ship.
        "tfhub": ["tensorflow-hub>=0.16,<0.17", "tf-keras>=2.16,<2.22", "setuptools<81"],
        "gcp": ["apache-beam[gcp]>=2.60,<3", "build>=1"],  # DataflowRunner; build makes the --setup_file sdist
        # s3:// inputs and models (s3fs) and outputs (Beam's own S3 filesystem needs boto3).
        "s3": ["s3fs>=2024.3", "apache-beam[aws]>=2.60,<3"],
        # Kept so that existing `pip install '.[openvino]'` commands still work: openvino is now a core dependency.
        "openvino": [],
        # --backend litert: .tflite files on Google's LiteRT runtime, without TensorFlow.
        "litert": ["ai-edge-litert>=2.0,<3"],
        # run_local.sh takes its sample photos from these packages.
        "samples": ["scikit-image>=0.22", "matplotlib>=3.8"],
        # beam-image-labeller-report: DuckDB queries the output, matplotlib draws the charts.
        "report": ["duckdb>=1.0", "matplotlib>=3.8"],
        # --iceberg-table: the run's final step commits its shards with pyiceberg (add the catalog's own extra, e.g.
        # pyiceberg[sql-postgres] or pyiceberg[glue]; sqlite is enough on one machine).
        "iceberg": ["pyiceberg[sql-sqlite]>=0.9,<1"],
        # benchmarks/runner_layouts.py: RSS of each run's whole process tree (multi_processing workers included).
        "bench": ["psutil>=5.9"],
        "test": [
            "pytest>=8",
            "build>=1",  # the sdist test builds what --setup_file ships to Dataflow workers
            "apache-beam[gcp]>=2.60,<3",  # the Dataflow job-graph test
            "packaging>=23",  # the lock-file test compares dataflow/requirements.lock with these requirements
            # tests/test_cloud_storage.py: gs:// on a local GCS emulator, s3:// on moto's server.
            "gcp-storage-emulator>=2024.8",
            "s3fs>=2024.3",
            "apache-beam[aws]>=2.60,<3",
            "moto[server]>=5",
            "ruff>=0.6",
            "tensorflow-hub>=0.16,<0.17",
            "tf-keras>=2.16,<2.22",
            "setuptools<81",  # tensorflow-hub 0.16 imports pkg_resources (gone from setuptools 81)
            "pytest-xdist>=3",  # run_tests.sh spreads the suite over the machine's cores
            "pytest-timeout>=2.2",  # a test that hangs fails after pyproject.toml's timeout instead of stalling CI
            "scikit-image>=0.22",
            "matplotlib>=3.8",
            "duckdb>=1.0",
            "pandas>=2",
            "pyiceberg[sql-sqlite]>=0.9,<1",  # the two-night warehouse test commits to a local Iceberg table
            "hypothesis>=6",  # property-style tests of the one-row-per-input invariant
            "ai-edge-litert>=2.0,<3",
            "imagehash>=4.3",  # the reference pHash that decode/preprocess.perceptual_hash is checked against
        ],
    },
    entry_points={
        "console_scripts": [
            "beam-image-labeller=beam_pipeline.launch.cli:command",
            "beam-image-labeller-report=beam_pipeline.report.cli:main",
        ]
    },
)
