// TorchScript serialisation into memory. libtorch's file writer cannot fail cleanly: when a
// write fails (a full disk), the exception unwinds through `PyTorchStreamWriter`, whose
// destructor writes the end of the archive, fails again and throws out of a destructor:
// std::terminate. So hondo never lets libtorch write a file: the module is serialised
// through a callback into a Rust buffer, and Rust writes the file (temp file and rename).
// Errors come back as in guard.h.
#include <torch/csrc/jit/api/module.h>
#include <torch/csrc/jit/serialization/export.h>

#include "guard.h"

extern "C" {

// Receives each chunk of the archive; returns the bytes taken (all of them: the callback
// never fails, see export.rs).
typedef size_t (*hondo_write_fn)(void *ctx, const void *data, size_t n);

// `torch.jit.save(m)` into `write(ctx, ...)`: the same bytes as `Module::save(filename)`.
char *hondo_module_save(torch::jit::Module *m, hondo_write_fn write, void *ctx) {
  GUARD({
    torch::jit::ExportModule(*m, [write, ctx](const void *data, size_t n) {
      return write(ctx, data, n);
    });
  })
}

}  // extern "C"
