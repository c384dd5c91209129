"""The emulated CPUs: qemu CPU models and the /proc/cpuinfo a Raspberry Pi shows.

qemu 7.2's default ``max`` CPU has SME, with which XNNPACK's int8 kernels give wrong results;
qemu-user also shows the guest the host's x86 /proc/cpuinfo, on which LiteRT's CPU detection
crashes. So each run names a real Pi core and gets that Pi's cpuinfo.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PiCpu:
    key: str
    board: str
    qemu_cpu: str
    features: str
    variant: str
    part: str
    revision: str
    board_revision: str

    @property
    def label(self) -> str:
        return f"{self.board} / {self.qemu_cpu}"

    def cpuinfo(self, cores: int = 4) -> str:
        """/proc/cpuinfo as Raspberry Pi OS 64-bit prints it on this board."""
        block = (
            "BogoMIPS\t: 108.00\n"
            f"Features\t: {self.features}\n"
            "CPU implementer\t: 0x41\n"
            "CPU architecture: 8\n"
            f"CPU variant\t: {self.variant}\n"
            f"CPU part\t: {self.part}\n"
            f"CPU revision\t: {self.revision}\n"
        )
        cpus = "".join(f"processor\t: {n}\n{block}\n" for n in range(cores))
        return (f"{cpus}Revision\t: {self.board_revision}\nSerial\t\t: 100000000badc0de\n"
                f"Model\t\t: Raspberry Pi {self.board[3:]} Model B Rev 1.0\n")


PI4 = PiCpu("pi4", "Pi 4", "cortex-a72", "fp asimd evtstrm crc32 cpuid", "0x0", "0xd08", "3", "c03111")
PI5 = PiCpu("pi5", "Pi 5", "cortex-a76",
            "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp",
            "0x4", "0xd0b", "1", "c04170")
CPUS = {cpu.key: cpu for cpu in (PI4, PI5)}
