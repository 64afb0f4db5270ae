// The C header from C++: it compiles, links and its types behave (built by the tests).
#include <cstdio>
#include <vgpu_client.h>

int main() {
    VgpuOptions options{};
    VgpuClient *client = nullptr;
    options.region = "/nonexistent/region";
    int rc = vgpu_open(&options, &client);
    std::printf("vgpu_open: %s\n", vgpu_strerror(rc));
    return rc == VGPU_E_REGION && client == nullptr ? 0 : 1;
}
