"""Build script of autoseg (the design card asks for setup.py; tool settings live in pyproject.toml)."""

from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = {}
exec((here / "autoseg" / "__init__.py").read_text(), version)

setup(
    name="autoseg",
    version=version["__version__"],
    description="Which segmentation loss works on your data: every surveyed loss as an nnU-Net v2 trainer, "
                "cross-validation grids and loss-ranking reports",
    long_description=(here / "README.md").read_text() if (here / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["autoseg", "autoseg.*"]),
    include_package_data=True,
    package_data={
        "autoseg.data": ["samples/*/*.json", "samples/*/*.md", "samples/*/LICENSE*",
                         "samples/*/imagesTr/*.nii.gz", "samples/*/labelsTr/*.nii.gz"],
        "autoseg.trainers": ["nnunet_ext/*.py"],
    },
    install_requires=[
        "torch>=2.3",
        "nnunetv2>=2.8,<2.9",
        "SimpleITK>=2.2",
        "batchgenerators>=0.25",
        "batchgeneratorsv2>=0.3",
        "acvl-utils>=0.2",
        "scikit-image>=0.21",
        "matplotlib>=3.7",
        "numpy>=1.24",
        "scipy>=1.10",
        "h5py>=3",  # the TransUNet release of Synapse
        "monai>=1.3",  # HD95 and normalised surface distance
        "pillow>=9",
        "edt>=2.3",  # exact, fast Euclidean distance transforms for the loss maps (scipy is the test oracle)
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-timeout>=2", "kornia>=0.7", "ruff>=0.5"],
    },
    entry_points={"console_scripts": ["autoseg=autoseg.cli.main:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
