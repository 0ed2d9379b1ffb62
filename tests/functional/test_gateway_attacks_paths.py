"""Outside attacks on path routing with a servlet container behind the gateway (Orange Tsai,
"Breaking Parser Logic", 2018): path parameters.

A servlet container (here a real Apache Tomcat 10.1, embedded, from Debian's
libtomcat10-embed-java) removes `;params` from every segment before it maps a request:
`/admin;x`, `/;/admin` and `/admin;jsessionid=1/users` are all `/admin` to it. The gateway
refuses the dot-segment form (`/..;/`), but routes every other `;` as part of its segment:
`/admin;x` is not under the PathPrefix `/admin`, so it takes the open route and reaches
Tomcat's `/admin` servlet without the key the gateway requires there. (The same gap is
reported against other gateways' normalizers: a `;param` on an ordinary segment.)

The oracle servlet reports which mapping Tomcat chose; each attack is a raw request without a
key and must be refused or reach Tomcat's public servlet, never its admin one.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from .cakit import free_port
from .gwkit import Client, GatewayProc, oracle_view, stop, wait_port

KEY = "alice-key-123"
TOMCAT_JARS = (
    "/usr/share/java/tomcat10-embed-core.jar",
    "/usr/share/java/tomcat10-embed-el.jar",
    "/usr/share/java/jakarta-annotation-api.jar",
)

ORACLE = """
import jakarta.servlet.http.HttpServlet;
import jakarta.servlet.http.HttpServletRequest;
import jakarta.servlet.http.HttpServletResponse;
import java.io.IOException;
import org.apache.catalina.Context;
import org.apache.catalina.startup.Tomcat;

public class Oracle {
    static HttpServlet report(String loc) {
        return new HttpServlet() {
            @Override
            protected void service(HttpServletRequest req, HttpServletResponse resp)
                    throws IOException {
                resp.setContentType("text/plain");
                resp.getWriter().print("loc=" + loc + "\\nservlet_path=" + req.getServletPath()
                    + "\\nrequest_uri=" + req.getRequestURI() + "\\n");
            }
        };
    }

    public static void main(String[] args) throws Exception {
        Tomcat tomcat = new Tomcat();
        tomcat.setBaseDir(args[1]);
        tomcat.setPort(Integer.parseInt(args[0]));
        tomcat.getConnector().setProperty("address", "127.0.0.1");
        Context ctx = tomcat.addContext("", null);
        Tomcat.addServlet(ctx, "admin", report("admin"));
        ctx.addServletMappingDecoded("/admin/*", "admin");
        Tomcat.addServlet(ctx, "public", report("public"));
        ctx.addServletMappingDecoded("/", "public");
        tomcat.start();
        tomcat.getServer().await();
    }
}
"""


def start_tomcat_oracle(tmp: Path) -> tuple[int, subprocess.Popen[bytes]]:
    """Tomcat with a servlet on /admin/* and one on /, each reporting its name."""
    javac, java = shutil.which("javac"), shutil.which("java")
    assert javac and java, "javac/java missing: make setup installs openjdk-17-jdk-headless"
    for jar in TOMCAT_JARS:
        assert Path(jar).exists(), f"{jar} missing: make setup installs it"
    src = tmp / "Oracle.java"
    src.write_text(ORACLE)
    classpath = ":".join([*TOMCAT_JARS, str(tmp)])
    subprocess.run(
        [javac, "-nowarn", "-cp", classpath, "-d", str(tmp), str(src)],
        check=True,
        capture_output=True,
    )
    port = free_port()
    log = tmp / "tomcat.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [java, "-Xmx128m", "-cp", classpath, "Oracle", str(port), str(tmp / "base")],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    wait_port(port, proc, log, timeout=40)
    return port, proc


def config(upstream: str) -> dict:
    return {
        "workers": 1,
        "backends": [{"name": "up", "endpoints": [upstream]}],
        "consumers": [{"name": "alice", "apiKeys": [KEY]}],
        "routes": [
            {
                "name": "admin",
                "matches": [{"path": {"type": "PathPrefix", "value": "/admin"}}],
                "backendRefs": [{"name": "up"}],
                "plugins": [{"name": "key-auth"}],
            },
            {"name": "open", "backendRefs": [{"name": "up"}]},
        ],
    }


@pytest.fixture(scope="module")
def tomcat(tmp_path_factory):
    port, proc = start_tomcat_oracle(tmp_path_factory.mktemp("tomcat"))
    yield f"http://127.0.0.1:{port}"
    stop(proc)


@pytest.fixture(scope="module")
def gw(tomcat, tmp_path_factory):
    g = GatewayProc(tmp_path_factory.mktemp("gw-tomcat")).start(config(tomcat))
    yield g
    g.stop()


def ask(gw: GatewayProc, target: str, extra: str = "") -> tuple[int, dict[str, str]]:
    request = (
        f"GET {target} HTTP/1.1\r\nHost: shop.example.test\r\n{extra}Connection: close\r\n\r\n"
    )
    with Client(gw.port) as c:
        a = c.send(request.encode()).answer()
    assert a is not None, f"no answer to {target!r}"
    return a.status, oracle_view(a.body) if a.status == 200 else {}


def test_the_oracle_tells_admin_from_public(gw) -> None:
    assert ask(gw, "/admin/users") == (401, {})
    status, view = ask(gw, "/admin/users", f"apikey: {KEY}\r\n")
    assert status == 200 and view["loc"] == "admin"
    status, view = ask(gw, "/public")
    assert status == 200 and view["loc"] == "public"


PATH_PARAMETER_SPELLINGS = [
    "/admin;x",
    "/admin;/",
    "/admin;x/users",
    "/admin;jsessionid=0123/users",
    "/;/admin",
    "/;x/admin/users",
    "/%61dmin;",
    "/adm%69n;x/users",
]


@pytest.mark.parametrize("target", PATH_PARAMETER_SPELLINGS)
def test_path_parameters_do_not_reach_a_servlets_admin_without_a_key(gw, target) -> None:
    status, view = ask(gw, target)
    assert status != 200 or view.get("loc") == "public", (
        f"{target!r} reached Tomcat's {view.get('servlet_path')} servlet ({view.get('loc')}) "
        f"through the gateway without a key"
    )
