"""Apache Kafka's jars from Maven Central, gathered once per machine into the cache
(:mod:`streams.devtools.cache`) for the launcher in :mod:`streams.devtools.apache_kafka`.

``kafka_2.13`` 4.4.0 brings log4j 2.25.5 and slf4j-api 1.7.36 but not the SLF4J binding, so
``log4j-slf4j-impl`` of the same version is added (without it the broker logs nothing).
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import time
from pathlib import Path

from streams.devtools.cache import cache_root, locked
from streams.errors import FatalError

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.4.0"
# kafka-server 4.4.0 depends on log4j-api/core 2.25.5; the SLF4J 1.x binding must be the same version.
LOG4J_VERSION = "2.25.5"
DEPENDENCY_PLUGIN = "3.8.1"  # pinned: unpinned, Maven resolves the newest from metadata (needs the network)
INSTALL_HINT = ("install Java 17+ and Maven (Debian: apt-get install openjdk-17-jre-headless maven), "
                "or point KAFKA_BOOTSTRAP_SERVERS at a broker you run")

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.safeguard-streams</groupId><artifactId>kafka-broker-libs</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version></dependency>
  </dependencies>
  <build><plugins><plugin><groupId>org.apache.maven.plugins</groupId>
    <artifactId>maven-dependency-plugin</artifactId><version>{plugin}</version></plugin></plugins></build>
</project>
"""

def missing_tools(*, need_maven: bool = True) -> list[str]:
    """What is missing to run the broker: ``java`` (17 or newer) and, before the first download, ``mvn``."""
    missing = []
    java = shutil.which("java")
    if java is None:
        missing.append("java")
    else:
        major = java_major(java)
        if major is not None and major < 17:
            missing.append(f"java 17+ (found {major})")
    if need_maven and shutil.which("mvn") is None:
        missing.append("mvn")
    return missing


def java_major(java: str) -> int | None:
    """The major version of ``java`` (``java -version`` prints it on stderr), None when unreadable."""
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if found is None:
        return None
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8


def available() -> bool:
    """Can this machine run the launcher (Java, and Maven unless the jars are already cached)?"""
    return not missing_tools(need_maven=not complete(home(KAFKA_VERSION) / "libs"))


def home(version: str) -> Path:
    """The cache directory of Kafka ``version``: its jars (``libs``) and storage template."""
    return cache_root() / f"kafka-{version}"


def complete(libs: Path) -> bool:
    return (libs / ".complete").is_file()


def gather(version: str = KAFKA_VERSION) -> Path:
    """The broker's classpath directory, gathered with Maven on first use (about 45 jars, 43 MB).

    Offline once gathered. Raises FatalError naming what to install, or with Maven's own words
    when Maven Central cannot be reached."""
    root = home(version)
    libs = root / "libs"
    if complete(libs):
        return libs
    with locked(root.with_suffix(".lock")):
        if complete(libs):
            return libs
        missing = missing_tools()
        if missing:
            raise FatalError(f"the Apache Kafka broker needs {' and '.join(missing)}: {INSTALL_HINT}")
        root.mkdir(parents=True, exist_ok=True)
        pom = root / "pom.xml"
        pom.write_text(_POM.format(kafka=version, log4j=LOG4J_VERSION, plugin=DEPENDENCY_PLUGIN))
        staging = root / "libs.partial"
        shutil.rmtree(staging, ignore_errors=True)
        log.info("gathering Apache Kafka %s jars with Maven into %s (once per machine)", version, libs)
        started = time.monotonic()
        cmd = ["mvn", "-B", "-q", "-f", str(pom), "dependency:copy-dependencies", "-DincludeScope=runtime",
               f"-DoutputDirectory={staging}"]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
            raise FatalError(f"Maven could not gather Apache Kafka {version} (exit {result.returncode}; "
                             f"Maven Central unreachable? {' '.join(cmd)}):\n{tail}")
        jars = sorted(p.name for p in staging.glob("*.jar"))
        if not any(j.startswith("kafka_2.13-") for j in jars):
            raise FatalError(f"Maven finished but {staging} holds no kafka_2.13 jar: {jars}")
        shutil.rmtree(libs, ignore_errors=True)
        staging.rename(libs)
        (libs / ".complete").write_text("\n".join(jars) + "\n")
        log.info("gathered %d jars in %.1fs", len(jars), time.monotonic() - started)
    return libs
