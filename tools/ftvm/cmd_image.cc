// `ftvm serve-image`: serve the raw disk images in a directory, so that a VM can
// start from one before it has been copied (`ftvm run --image-from`).
#include <cstdio>
#include <iostream>

#include "common/error.h"
#include "storage/image_server.h"
#include "tools/ftvm/commands.h"
#include "tools/ftvm/vm_runner.h"

namespace ftvm::cli {
namespace po = boost::program_options;

int ServeImageMain(int argc, char** argv) {
  BlockStopSignals();
  storage::ImageServerOptions opts;
  std::string listen;
  uint32_t block_kib = opts.block_bytes / 1024;
  double rate_mib = 0;
  po::options_description desc("ftvm serve-image options");
  desc.add_options()
      ("help,h", "show this help")
      ("listen", po::value(&listen)->required(), "HOST:PORT to serve on (port 0: any free port)")
      ("dir", po::value(&opts.dir)->required(), "directory of raw images, served by file name; boot profiles are kept "
                                                "next to them (NAME.profile)")
      ("block-kib", po::value(&block_kib)->default_value(block_kib), "block size, the unit of every transfer (KiB, a "
                                                                     "multiple of 4, at most 4096)")
      ("rate-mib", po::value(&rate_mib)->default_value(rate_mib),
       "limit each client's background copy to this many MiB/s (0: no limit); demanded blocks and the boot profile "
       "are never held back");
  if (auto code = ParseCommandLine(argc, argv, desc, "serve-image", "usage: ftvm serve-image --listen HOST:PORT --dir DIR\n"))
    return *code;
  if (!(rate_mib >= 0)) {
    std::cerr << "ftvm serve-image: --rate-mib must be >= 0\n";
    return kExitUsage;
  }
  if (block_kib == 0 || block_kib % 4 != 0 || block_kib > 4096) {
    std::cerr << "ftvm serve-image: --block-kib must be a multiple of 4 from 4 to 4096\n";
    return kExitUsage;
  }
  opts.block_bytes = block_kib * 1024;
  opts.rate_bytes = uint64_t(rate_mib * double(1u << 20));
  try {
    storage::ImageServer server(listen, opts);
    std::fprintf(stderr, "serve-image: listening on %s, serving the images in %s\n", server.address().c_str(),
                 opts.dir.c_str());
    return RunUntilDone(
        [&] {
          server.run();
          return 0;
        },
        [&] { server.stop(); });
  } catch (const Error& e) {
    std::cerr << "ftvm serve-image: " << e.what() << "\n";
    return kExitVmmError;
  } catch (const std::exception& e) {
    std::cerr << "ftvm serve-image: internal error: " << e.what() << "\n";
    return kExitVmmError;
  }
}

}  // namespace ftvm::cli
