/**
 * containerd's image records over gRPC (containerd.services.images.v1): a
 * name pointing at a manifest (or index) descriptor. containerd's GC treats
 * every image record as a root and follows the target's content labels.
 */
import { AlreadyExistsError } from "../errors.js";
import { imagesService } from "../wire/proto.js";
import { type ContainerdContext, ServiceClient, type WireDescriptor } from "./grpc.js";

export class ImagesClient extends ServiceClient {
  constructor(ctx: ContainerdContext) {
    super(imagesService(), ctx);
  }

  /**
   * Creates the record, or points an existing one at `target` (keeping its
   * labels), as `ctr images import` does.
   */
  async put(name: string, target: WireDescriptor): Promise<"created" | "updated"> {
    try {
      await this.unary("Create", { image: { name, target } });
      return "created";
    } catch (err) {
      if (!(err instanceof AlreadyExistsError)) throw err;
    }
    await this.unary("Update", { image: { name, target }, updateMask: { paths: ["target"] } });
    return "updated";
  }
}
