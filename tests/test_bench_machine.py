"""Benchmark results are filed per CPU model: figures from different CPUs never share a folder."""
from bench.common import cpu_identity, machine_name

ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC 9R14 96-Core Processor
stepping\t: 1
cpu MHz\t\t: 2600.000
flags\t\t: fpu avx2 fma f16c avx512f avx512bw avx512_vnni avx512_bf16

processor\t: 1
vendor_id\t: AuthenticAMD
"""


def test_cpu_identity_names_family_model_microarch_isa_clock():
    cpu = cpu_identity(ZEN4)
    assert (cpu["vendor"], cpu["family"], cpu["model"], cpu["stepping"]) == ("AuthenticAMD", 25, 17, 1)
    assert cpu["microarch"] == "zen4" and cpu["mhz"] == 2600
    assert cpu["isa"] == ["avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"]
    assert machine_name(cpu).startswith("amd-zen4-")


def test_unknown_cpus_of_one_vendor_get_different_folders():
    zen5 = cpu_identity(ZEN4.replace("cpu family\t: 25", "cpu family\t: 26").replace("model\t\t: 17", "model\t\t: 2"))
    other = cpu_identity(ZEN4.replace("model\t\t: 17", "model\t\t: 97"))
    names = {machine_name(cpu_identity(ZEN4)), machine_name(zen5), machine_name(other)}
    assert len(names) == 3 and machine_name(other).startswith("amd-fam25-model97-")


def test_no_cpuinfo_still_names_something():
    cpu = cpu_identity("")
    assert cpu["family"] is None and machine_name(cpu)
